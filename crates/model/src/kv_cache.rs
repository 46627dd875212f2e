//! The KV cache of one sequence: per layer, K (after k_norm and M-RoPE) and V, (max_len, nkv, hd) each; plus
//! the decoder's working buffers, so a decode step allocates nothing.

use crate::model::Model;
use crate::text::decoder_layer::TextScratch;

pub struct KvCache {
    /// per layer: (max_len, nkv·hd)
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    len: usize,
    max_len: usize,
    /// (l, H) hidden states of the current call
    pub(crate) x: Vec<f32>,
    pub(crate) scratch: TextScratch,
}

impl KvCache {
    /// A cache for up to `max_len` tokens of `model`. The memory is reserved up front (zeroed pages are
    /// only touched as the sequence grows).
    pub fn new(model: &Model, max_len: usize) -> KvCache {
        let t = &model.config().text;
        let kvd = t.num_key_value_heads * t.head_dim;
        KvCache {
            k: (0..t.num_hidden_layers)
                .map(|_| vec![0.0; max_len * kvd])
                .collect(),
            v: (0..t.num_hidden_layers)
                .map(|_| vec![0.0; max_len * kvd])
                .collect(),
            len: 0,
            max_len,
            x: Vec::new(),
            scratch: TextScratch::default(),
        }
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

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
