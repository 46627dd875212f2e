//! The decoder's working memory, owned by the caller (llama2.c's `RunState`): the hidden states of the
//! rows of one forward pass, the per-layer scratch and the logits. Buffers only grow, so once a state has
//! seen a batch of a given size, steps of that size allocate nothing.

use crate::text::decoder_layer::TextScratch;

#[derive(Default)]
pub struct RunState {
    /// (m, H) hidden states of the rows of the current call (every sequence's rows, in order)
    pub(crate) x: Vec<f32>,
    pub(crate) scratch: TextScratch,
    /// (r, H) the final-normed rows whose logits were asked for, gathered
    pub(crate) picked: Vec<f32>,
    /// (r, V) logits of the last call
    pub(crate) logits: Vec<f32>,
    /// (row of the call, sequence, row of its visual features) of every image token of the call
    pub(crate) visual_rows: Vec<(usize, usize, usize)>,
}

impl RunState {
    pub fn new() -> RunState {
        RunState::default()
    }

    /// Logits of the last forward pass: the requested rows of every sequence, in order, (r, V).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}
