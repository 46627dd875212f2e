//! The KV cache of one sequence: per layer, K (after k_norm and M-RoPE) and V, (max_len, nkv·hd) each.
//! Nothing else: the decoder's activations live in the caller's [`crate::RunState`].

use crate::config::TextConfig;

pub struct KvCache {
    /// per layer: (max_len, nkv·hd)
    pub(crate) k: Vec<Vec<f32>>,
    /// per layer: (max_len, nkv·hd)
    pub(crate) v: Vec<Vec<f32>>,
    len: usize,
    max_len: usize,
}

impl KvCache {
    /// A cache for up to `max_len` tokens of a decoder with config `cfg`. The memory is reserved up front
    /// (zeroed pages are only touched as the sequence grows).
    pub fn new(cfg: &TextConfig, max_len: usize) -> KvCache {
        let kvd = cfg.num_key_value_heads * cfg.head_dim;
        let layer = || vec![0.0; max_len * kvd];
        KvCache {
            k: (0..cfg.num_hidden_layers).map(|_| layer()).collect(),
            v: (0..cfg.num_hidden_layers).map(|_| layer()).collect(),
            len: 0,
            max_len,
        }
    }

    /// Bytes a cache of `max_len` tokens reserves for a decoder with config `cfg` (f32 K and V, every layer).
    pub fn bytes_for(cfg: &TextConfig, max_len: usize) -> u64 {
        2 * cfg.num_hidden_layers as u64
            * (cfg.num_key_value_heads * cfg.head_dim) as u64
            * max_len as u64
            * 4
    }

    /// Bytes reserved for keys and values (every layer, `max_len` positions).
    pub fn reserved_bytes(&self) -> u64 {
        self.k
            .iter()
            .chain(&self.v)
            .map(|x| std::mem::size_of_val(x.as_slice()) as u64)
            .sum()
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets every token from `n` on (keeps the first `n`).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Copies the first `n` tokens of `src` (a cache of the same model) into this one, replacing its
    /// contents: a sequence that shares a prefix with a cached one starts from its keys and values.
    pub fn copy_prefix_from(&mut self, src: &KvCache, n: usize) -> Result<(), crate::ModelError> {
        if n > src.len || n > self.max_len || self.k.len() != src.k.len() {
            return Err(crate::ModelError::Input(format!(
                "cannot copy {n} cached tokens from a cache holding {} into one of {} tokens",
                src.len, self.max_len
            )));
        }
        let kvd = self.k.first().map_or(0, |l| l.len() / self.max_len.max(1));
        for (dst, s) in self
            .k
            .iter_mut()
            .zip(&src.k)
            .chain(self.v.iter_mut().zip(&src.v))
        {
            dst[..n * kvd].copy_from_slice(&s[..n * kvd]);
        }
        self.len = n;
        Ok(())
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
