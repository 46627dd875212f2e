//! Deterministic mutations (the same seed gives the same inputs).

/// xorshift64*.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Numbers that break size arithmetic.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "255",
    "65536",
    "1e15",
    "1e308",
    "-1e308",
    "1.5",
    "4294967296",
    "1099511627776",
    "1152921504606846980",
    "4611686018427387904",
    "18446744073709551615",
    "99999999999999999999999",
    "null",
    "[]",
    "{}",
    "\"x\"",
    "true",
];

const BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'{', b'}', b'[', b']', b'"', b',', b':',
];

/// One mutant of `base`: one to four mutations stacked.
pub fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut v);
    }
    v
}

fn mutate_once(rng: &mut Rng, v: &mut Vec<u8>) {
    if v.is_empty() {
        v.push(rng.next_u64() as u8);
        return;
    }
    let n = v.len();
    match rng.below(8) {
        0 => {
            let i = rng.below(n);
            v[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(n);
            v[i] = BYTES[rng.below(BYTES.len())];
        }
        2 => {
            // delete a chunk
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            v.drain(i..i + len);
        }
        3 => {
            // duplicate a chunk
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(256));
            let chunk = v[i..i + len].to_vec();
            let at = rng.below(n + 1);
            v.splice(at..at, chunk);
        }
        4 => {
            // 4-byte little-endian integer overwrite (binary headers)
            let i = rng.below(n);
            let x = [0u32, 1, 0xffff, 0xffff_ffff, 0x8000_0000, 0x7fff_ffff][rng.below(6)];
            for (k, b) in x.to_le_bytes().iter().enumerate() {
                if i + k < n {
                    v[i + k] = *b;
                }
            }
        }
        _ => replace_number(rng, v),
    }
}

/// Replace one run of ASCII digits (a JSON number, a size in a header) with an interesting value.
fn replace_number(rng: &mut Rng, v: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..v.len())
        .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        let i = rng.below(v.len());
        v[i] ^= 0x20;
        return;
    }
    let s = starts[rng.below(starts.len())];
    let mut e = s;
    while e < v.len() && (v[e].is_ascii_digit() || v[e] == b'.' || v[e] == b'e' || v[e] == b'-') {
        e += 1;
    }
    let with = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
    v.splice(s..e, with.iter().copied());
}
