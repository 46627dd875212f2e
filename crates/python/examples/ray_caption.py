#!/usr/bin/env python3
"""Caption a directory of images with Ray Data and qwen3vl.

Each Ray actor loads the model once (a callable class) and captions batches of images through
`Model.generate_batch` (the engine's batched decode); Ray Data streams the images from storage, spreads the
batches over the actors, and writes the captions. The same script runs on a laptop (local mode) or, with
`ray.init(address="auto")` and the images on shared storage (s3://, gs://, NFS), over millions of images on
a cluster: raise --concurrency to the number of model replicas and --num-cpus to the cores each one uses.

    python crates/python/examples/ray_caption.py --images ./photos --model Qwen/Qwen3-VL-2B-Instruct \\
        --out captions/ --concurrency 2 --num-cpus 4
"""
import argparse

import numpy as np


class Captioner:
    """A map_batches callable: loads the model once per actor, captions a batch of images per call."""

    def __init__(self, model, prompt="Describe this image in one sentence.", max_tokens=64, threads=None,
                 temperature=0.0):
        import qwen3vl

        self.model = qwen3vl.Model(model, threads=threads)
        self.prompt, self.max_tokens, self.temperature = prompt, max_tokens, temperature

    def __call__(self, batch):
        # `image`: uint8 arrays (H, W, 3), one per row (variable sizes arrive as an object array).
        images = [np.asarray(im, dtype=np.uint8) for im in batch["image"]]
        captions = self.model.generate_batch(
            [self.prompt] * len(images),
            images=images,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        return {"path": np.asarray(batch["path"]), "caption": np.asarray(captions, dtype=object)}


def caption_dataset(images, model, concurrency=1, num_cpus=1, batch_size=8, threads=None, **captioner_kw):
    """The lazy Ray dataset of {"path", "caption"} rows for every image under `images` (a path or URI)."""
    import ray

    ds = ray.data.read_images(images, include_paths=True, mode="RGB")
    return ds.map_batches(
        Captioner,
        fn_constructor_kwargs=dict(model=model, threads=threads or num_cpus, **captioner_kw),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=num_cpus,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="directory (or URI) of images")
    ap.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    ap.add_argument("--out", help="write JSON lines here (a directory); default: print")
    ap.add_argument("--prompt", default="Describe this image in one sentence.")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=1, help="model replicas (Ray actors)")
    ap.add_argument("--num-cpus", type=int, default=2, help="cores per replica (also its engine threads)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    a = ap.parse_args()

    import ray

    if a.address:
        ray.init(address=a.address)
    else:
        ray.init(num_cpus=a.concurrency * a.num_cpus, include_dashboard=False)
    ds = caption_dataset(a.images, a.model, a.concurrency, a.num_cpus, a.batch_size,
                         prompt=a.prompt, max_tokens=a.max_tokens)
    if a.out:
        ds.write_json(a.out)
    else:
        for row in ds.iter_rows():
            print(f"{row['path']}\t{row['caption']}")


if __name__ == "__main__":
    main()
