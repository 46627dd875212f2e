//! Integer lanes: the dot product of one quantization block — 32 int8 weights × 32 int16 activations
//! (q8), or 32 4-bit weights × 32 int8 activations (q4) — on top of [`Simd`].
//!
//! Why int16 activations rather than int8 (W8A8): on AVX2 the int8 route (`pmaddubsw` multiplies u8 by s8
//! into *saturating* i16 pairs, so a signed product needs |w| · (x · sign(w)) to stay below 2·128·127 =
//! 32512, then `pmaddwd` by ones) costs sign + maddubs + madd per 32 products; the int16 route (weights
//! widened once per block with `pmovsxbw`, reused by every row of x, then `pmaddwd`, i16 × i16 pairs into
//! i32, which cannot overflow: |w| ≤ 128, |x| ≤ 32767) costs 2 madd + 1 add — the same count — and
//! quantizes activations 256× finer (relative step 1/32767 instead of 1/127). On the repository's tiny
//! checkpoints (hidden size 8, where nothing averages the errors out) W8A8 measured logits cosine 0.99923
//! against transformers fp32, W8A16 0.9996 (weights alone: 0.99959). With VNNI the count changes:
//! `vpdpbusd` adds 4 u8 × s8 products to an i32 lane in one instruction, exactly, so the `Fast` matmuls of
//! many rows (prefill, vision) run W8A8 there ([`SimdA8`], `quant/a8.rs`); decode and `Exact` keep int16.
//!
//! q4 is the other way round: its weights are unsigned 4-bit (0..=15), so `pmaddubsw` takes them as the
//! unsigned operand and the int8 activations as the signed one with no sign trick, and its i16 pair sums
//! cannot saturate (2 · 15 · 127 < 2^15): one instruction does 32 products, twice the int16 route's rate.
//! The weight error (4 bits) dominates the activation error (8 bits, one scale per 256) there.
#![allow(clippy::missing_safety_doc)] // each unsafe fn states its contract in a "Safety:" line

use super::Simd;

/// Values of k per quantization block.
pub const BLOCK: usize = 32;

/// int8 × int16 block primitives of one ISA level.
pub trait SimdInt: Simd {
    /// One block of 32 int8 weights, widened to i16, in registers.
    type W: Copy;
    /// One block of 32 i16 activations in registers.
    type X: Copy;
    /// Load and widen 32 weights. Safety: `p..p+32` is readable.
    unsafe fn ld_w(self, p: *const i8) -> Self::W;
    /// Load 32 activations. Safety: `p..p+32` is readable.
    unsafe fn ld_x(self, p: *const i16) -> Self::X;
    /// Σ w·x over the block, as f32 lanes whose sum is the integer dot product (the i32 lane sums are
    /// exact, at most 32 · 128 · 32767 < 2^31; each is rounded once to f32).
    fn dot(self, w: Self::W, x: Self::X) -> Self::V;
}

/// 4-bit × int8 primitives of one ISA level (q4), in steps of `GROUP` sub-blocks of 32 (see
/// `quant/kernel.rs`). A vector holds one sub-block per 128-bit lane: the weights' bytes of GROUP
/// sub-blocks are loaded as they are stored and split into low nibbles (values 0..16 of each sub-block)
/// and high nibbles (values 16..32), and the activations are stored in the same order (`GROUP` is the
/// `group` of `quant::group_activations`). Per super-block the sub-block dot products are scaled by their
/// byte scales and summed in i32 lanes (`dot4`), then converted once and multiplied by d·d_x; the
/// minimum terms are one f32 FMA (`min_fma`).
pub trait SimdQ4: Simd {
    /// Sub-blocks of 32 per step: 128-bit lanes per vector (1 SSE4.1, 2 AVX2, 4 AVX-512).
    const GROUP: usize;
    /// i32 accumulator lanes.
    type I: Copy;
    /// The 32·GROUP weights 0..=15 of one step, one unsigned byte each: [low nibbles, high nibbles].
    type W4: Copy;
    /// The 32·GROUP int8 activations of one step in group order: [values 0..16, values 16..32] of each
    /// sub-block (lane).
    type X8: Copy;
    /// The 8 sub-block scales of a super-block as i16, in every 128-bit lane.
    type Sc8: Copy;
    /// The i16 multipliers of one step: lane l holds the scale of sub-block t·GROUP + l.
    type Sc: Copy;
    /// −dmin·mn_j of the 8 sub-blocks of a super-block as f32 lanes (lanes past 8 zero).
    type Mn: Copy;
    fn izero(self) -> Self::I;
    /// Load the 16·GROUP bytes of nibbles of GROUP sub-blocks (byte t of a sub-block holds L_t in its low
    /// and L_{t+16} in its high nibble). Safety: `p..p+16·GROUP` is readable.
    unsafe fn ld_w4(self, p: *const u8) -> Self::W4;
    /// Load 32·GROUP int8 activations (each in -127..=127) in group order. Safety: `p..p+32·GROUP` is
    /// readable.
    unsafe fn ld_x8(self, p: *const i8) -> Self::X8;
    /// Load the 8 scale bytes of a super-block. Safety: `p..p+8` is readable.
    unsafe fn ld_sc8(self, p: *const u8) -> Self::Sc8;
    /// The multipliers of step `t` < 8 / GROUP.
    fn sc_step(self, sc: Self::Sc8, t: usize) -> Self::Sc;
    /// acc + Σ over the step's sub-blocks j of sc_j · Σ_{sub-block j} w·x, spread over the i32 lanes:
    /// `pmaddubsw` u8 × s8 pairs into i16 for both halves (≤ 2·15·127 each: no saturation), the halves
    /// added (≤ 4·15·127 < 2^15), then i16 × scale pairs into i32 (by `vpdpwssd` when `VNNI`). A lane gains
    /// at most 2·4·15·127·255 < 2^22 per step: exact. `VNNI` only where the entry point enables it.
    fn dot4<const VNNI: bool>(
        self,
        acc: Self::I,
        w: Self::W4,
        x: Self::X8,
        sc: Self::Sc,
    ) -> Self::I;
    /// i32 lanes to f32 (each rounded once; exact below 2^24, which holds for GROUP ≥ 2).
    fn cvt_i(self, v: Self::I) -> Self::V;
    /// The 8 minimum bytes at `p` times `nmin` (= −dmin). Safety: `p..p+8` is readable.
    unsafe fn ld_mn(self, p: *const u8, nmin: f32) -> Self::Mn;
    /// acc + mn · (the 8 f32 at `p`), lane by lane (only the lane sum of the result matters).
    /// Safety: `p..p+8` is readable.
    unsafe fn min_fma(self, mn: Self::Mn, p: *const f32, acc: Self::V) -> Self::V;
}

/// Dot products of 4 bytes in i32 lanes, one output column per lane (the int8-activation GEMMs of
/// `quant/a8.rs`): the weights come packed as 4 consecutive bytes of k per column and lane, the
/// activations as 4 bytes broadcast to every lane.
pub trait SimdA8: Simd {
    /// i32 lanes, `LANES` of them (or i16 pairs between [`SimdA8::dp4_w4`] and [`SimdA8::w4_sum`]).
    type Acc: Copy;
    fn acc_zero(self) -> Self::Acc;
    /// Load `LANES` i32 (or the 4·`LANES` packed weight bytes). Safety: `p..p+LANES` is readable.
    unsafe fn ld_acc(self, p: *const i32) -> Self::Acc;
    /// q8: acc + Σ_{t<4} x[t] · w[lane][t] per lane, `w` 4 signed bytes per lane, `x` 4 unsigned bytes
    /// (`vpdpbusd`: exact, no i16 saturation; implemented only where the entry point enables VNNI).
    /// Safety: `x..x+4` is readable.
    unsafe fn dp4(self, acc: Self::Acc, w: Self::Acc, x: *const u8) -> Self::Acc;
    /// q4: one step of a block's sums of unsigned weights 0..=15 (`w`, 4 per lane) times signed `x`
    /// (4 bytes, each in -127..=127): with `VNNI` `vpdpbusd` into the i32 lanes; else `pmaddubsw` into
    /// i16 pairs added to `acc` (each pair ≤ 2·15·127 = 3810: 8 steps, a block, stay below 2^15).
    /// Safety: `x..x+4` is readable.
    unsafe fn dp4_w4<const VNNI: bool>(
        self,
        acc: Self::Acc,
        w: Self::Acc,
        x: *const i8,
    ) -> Self::Acc;
    /// The i32 lane sums of a block's [`SimdA8::dp4_w4`] steps from [`SimdA8::acc_zero`]: as they are
    /// with `VNNI`, else the i16 pairs added by `pmaddwd` with ones. Exact either way.
    fn w4_sum<const VNNI: bool>(self, acc: Self::Acc) -> Self::Acc;
    /// i32 lanes to f32 (each rounded once).
    fn cvt_acc(self, v: Self::Acc) -> Self::V;
}
