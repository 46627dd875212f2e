//! Grounding: the boxes and points a Qwen-VL model writes in its answer, mapped back onto the original image,
//! and drawn on it.
//!
//! Qwen3-VL answers grounding questions with JSON such as
//! `[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, {"point_2d": [x, y], "label": "dog"}]`, usually inside a
//! Markdown code fence, with coordinates relative to the image on a 0–1000 scale. Qwen2.5-VL writes the same
//! keys in absolute pixels of the image it was shown (after `smart_resize`). Every JSON object with a
//! `bbox_2d` or `point_2d` of finite numbers anywhere in the text is taken, in order; anything else is
//! ignored (an answer without boxes gives none, never an error).

use image::{Rgb, RgbImage};
use serde_json::Value;

/// How the model's coordinates are scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Coords {
    /// Qwen3-VL: 0..1000 across the image's width and height.
    Relative1000,
    /// Qwen2.5-VL: pixels of the resized image the model saw (its width and height).
    Absolute { width: f64, height: f64 },
}

/// A box or point in some coordinate system: [x1, y1, x2, y2] or [x, y].
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    Box([f64; 4]),
    Point([f64; 2]),
}

/// One grounded object.
#[derive(Clone, Debug, PartialEq)]
pub struct Grounding {
    pub label: Option<String>,
    pub shape: Shape,
}

/// The boxes and points in a model's answer, in the model's own coordinates, in order of appearance.
pub fn parse(answer: &str) -> Vec<Grounding> {
    let mut out = Vec::new();
    let mut i = 0;
    let b = answer.as_bytes();
    while i < b.len() {
        if b[i] == b'[' || b[i] == b'{' {
            let mut it = serde_json::Deserializer::from_str(&answer[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = it.next() {
                collect(&v, &mut out);
                i += it.byte_offset().max(1);
                continue;
            }
        }
        i += 1;
    }
    out
}

fn collect(v: &Value, out: &mut Vec<Grounding>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(o) => {
            let nums = |k: &str| -> Option<Vec<f64>> {
                let a = o.get(k)?.as_array()?;
                let f: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
                (f.len() == a.len() && f.iter().all(|x| x.is_finite())).then_some(f)
            };
            let label = o.get("label").and_then(Value::as_str).map(str::to_string);
            if let Some(&[x1, y1, x2, y2]) = nums("bbox_2d").as_deref() {
                out.push(Grounding {
                    label,
                    shape: Shape::Box([x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2)]),
                });
            } else if let Some(&[x, y]) = nums("point_2d").as_deref() {
                out.push(Grounding {
                    label,
                    shape: Shape::Point([x, y]),
                });
            } else {
                o.values().for_each(|x| collect(x, out));
            }
        }
        _ => {}
    }
}

/// Map groundings in model coordinates onto an image of `width`×`height` pixels (clamped to it).
pub fn to_image(items: &[Grounding], coords: Coords, width: u32, height: u32) -> Vec<Grounding> {
    let (w, h) = (width as f64, height as f64);
    let (sx, sy) = match coords {
        Coords::Relative1000 => (w / 1000.0, h / 1000.0),
        Coords::Absolute {
            width: rw,
            height: rh,
        } => (w / rw.max(1.0), h / rh.max(1.0)),
    };
    let x = |v: f64| (v * sx).clamp(0.0, w);
    let y = |v: f64| (v * sy).clamp(0.0, h);
    items
        .iter()
        .map(|g| Grounding {
            label: g.label.clone(),
            shape: match g.shape {
                Shape::Box([x1, y1, x2, y2]) => Shape::Box([x(x1), y(y1), x(x2), y(y2)]),
                Shape::Point([px, py]) => Shape::Point([x(px), y(py)]),
            },
        })
        .collect()
}

/// Colours cycled per distinct label.
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [255, 225, 25],
];

/// Draw groundings (in image pixels, see [`to_image`]) on a copy of `img`: boxes as 2-pixel outlines,
/// points as filled discs, each labelled in a small bitmap font on a filled tab of the box's colour.
pub fn draw(img: &RgbImage, items: &[Grounding]) -> RgbImage {
    let mut out = img.clone();
    let mut labels: Vec<&str> = Vec::new();
    for g in items {
        let name = g.label.as_deref().unwrap_or("");
        let k = labels.iter().position(|l| *l == name).unwrap_or_else(|| {
            labels.push(name);
            labels.len() - 1
        });
        let color = Rgb(PALETTE[k % PALETTE.len()]);
        let (lx, ly) = match g.shape {
            Shape::Box([x1, y1, x2, y2]) => {
                let (x1, y1, x2, y2) = (x1 as i64, y1 as i64, x2 as i64, y2 as i64);
                for t in 0..2 {
                    hline(&mut out, x1, x2, y1 + t, color);
                    hline(&mut out, x1, x2, y2 - t, color);
                    vline(&mut out, x1 + t, y1, y2, color);
                    vline(&mut out, x2 - t, y1, y2, color);
                }
                (x1, y1 - 9)
            }
            Shape::Point([x, y]) => {
                let (cx, cy) = (x as i64, y as i64);
                for dy in -4i64..=4 {
                    for dx in -4i64..=4 {
                        if dx * dx + dy * dy <= 16 {
                            put(&mut out, cx + dx, cy + dy, color);
                        }
                    }
                }
                (cx + 6, cy - 4)
            }
        };
        if !name.is_empty() {
            label(&mut out, lx, ly.max(0), name, color);
        }
    }
    out
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn hline(img: &mut RgbImage, x1: i64, x2: i64, y: i64, c: Rgb<u8>) {
    let x2 = x2.min(img.width() as i64);
    for x in x1.max(0)..=x2 {
        put(img, x, y, c);
    }
}

fn vline(img: &mut RgbImage, x: i64, y1: i64, y2: i64, c: Rgb<u8>) {
    let y2 = y2.min(img.height() as i64);
    for y in y1.max(0)..=y2 {
        put(img, x, y, c);
    }
}

/// 3×5 glyphs, rows top to bottom, 3 bits each (bit 2 = left): digits, A–Z, and a few marks.
fn glyph(ch: char) -> [u8; 5] {
    match ch.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        ' ' => [0; 5],
        '-' | '_' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        _ => [7, 7, 7, 7, 7],
    }
}

/// Draw `text` at (x, y) in white on a tab of colour `c` (glyphs scaled 1:1, 4 px advance, 1 px margin).
fn label(img: &mut RgbImage, x: i64, y: i64, text: &str, c: Rgb<u8>) {
    let chars: Vec<char> = text.chars().take(40).collect();
    let w = chars.len() as i64 * 4 + 1;
    for dy in 0..7 {
        for dx in 0..w {
            put(img, x + dx, y + dy, c);
        }
    }
    for (k, ch) in chars.iter().enumerate() {
        for (r, bits) in glyph(*ch).iter().enumerate() {
            for b in 0..3 {
                if bits & (4 >> b) != 0 {
                    put(
                        img,
                        x + 1 + k as i64 * 4 + b,
                        y + 1 + r as i64,
                        Rgb([255, 255, 255]),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3_ANSWER: &str = "Here are the objects:\n```json\n[\n\t{\"bbox_2d\": [100, 200, 500, 800], \"label\": \"cat\"},\n\t{\"bbox_2d\": [600, 50, 400, 300], \"label\": \"dog\"},\n\t{\"point_2d\": [250, 750], \"label\": \"cat's nose\"}\n]\n```";

    #[test]
    fn parses_boxes_and_points_in_order() {
        let g = parse(QWEN3_ANSWER);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].label.as_deref(), Some("cat"));
        assert_eq!(g[0].shape, Shape::Box([100.0, 200.0, 500.0, 800.0]));
        // Corners given in the wrong order are normalized.
        assert_eq!(g[1].shape, Shape::Box([400.0, 50.0, 600.0, 300.0]));
        assert_eq!(g[2].shape, Shape::Point([250.0, 750.0]));
    }

    #[test]
    fn text_without_boxes_and_broken_json_give_nothing() {
        assert!(parse("A cat sits on a mat.").is_empty());
        assert!(parse("[{\"bbox_2d\": [1, 2, 3], \"label\": \"x\"}]").is_empty());
        assert!(parse("{\"bbox_2d\": [1, 2, \"a\", 4]}").is_empty());
        assert!(parse("[{\"bbox_2d\": [1, 2, 3, 4]").is_empty());
        // A single object, and one nested in other JSON.
        assert_eq!(parse("{\"bbox_2d\": [1, 2, 3, 4]}").len(), 1);
        assert_eq!(
            parse("{\"objects\": [{\"point_2d\": [5, 6]}]} and [1, 2]").len(),
            1
        );
    }

    #[test]
    fn maps_relative_and_absolute_coordinates_to_the_original_image() {
        let g = parse(QWEN3_ANSWER);
        let m = to_image(&g, Coords::Relative1000, 640, 480);
        assert_eq!(m[0].shape, Shape::Box([64.0, 96.0, 320.0, 384.0]));
        assert_eq!(m[2].shape, Shape::Point([160.0, 360.0]));
        // Qwen2.5-VL: pixels of the 320x240 picture the model saw, on a 640x480 original; clamped.
        let a = parse("[{\"bbox_2d\": [10, 20, 400, 120]}]");
        let m = to_image(
            &a,
            Coords::Absolute {
                width: 320.0,
                height: 240.0,
            },
            640,
            480,
        );
        assert_eq!(m[0].shape, Shape::Box([20.0, 40.0, 640.0, 240.0]));
    }

    #[test]
    fn draws_outlines_points_and_labels() {
        let img = RgbImage::from_pixel(100, 80, Rgb([0, 0, 0]));
        let items = vec![
            Grounding {
                label: Some("cat".into()),
                shape: Shape::Box([10.0, 20.0, 60.0, 70.0]),
            },
            Grounding {
                label: Some("dog".into()),
                shape: Shape::Point([80.0, 40.0]),
            },
        ];
        let out = draw(&img, &items);
        let red = Rgb(PALETTE[0]);
        // The outline, not the inside.
        assert_eq!(*out.get_pixel(10, 45), red);
        assert_eq!(*out.get_pixel(11, 45), red);
        assert_eq!(*out.get_pixel(60, 45), red);
        assert_eq!(*out.get_pixel(35, 70), red);
        assert_eq!(*out.get_pixel(35, 45), Rgb([0, 0, 0]));
        // The point in the second label's colour.
        assert_eq!(*out.get_pixel(80, 40), Rgb(PALETTE[1]));
        // The label tab above the box holds white glyph pixels.
        let tab = (11..23).flat_map(|y| (10..24).map(move |x| (x, y)));
        assert!(tab
            .map(|(x, y)| *out.get_pixel(x, y))
            .any(|p| p == Rgb([255, 255, 255])));
        // Boxes partly outside the image are clipped, not a panic.
        let _ = draw(
            &img,
            &[Grounding {
                label: Some("edge".into()),
                shape: Shape::Box([-5.0, -5.0, 500.0, 500.0]),
            }],
        );
    }
}
