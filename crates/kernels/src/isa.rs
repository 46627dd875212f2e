//! Instruction-set levels, CPU feature detection and the choice of level.
//!
//! Detection is real: on x86-64 it uses `is_x86_feature_detected!`, which checks CPUID *and* that the OS
//! saves the wider register state (XGETBV), so AVX-512 is never trusted on a kernel that does not save zmm.
//! The chosen level comes from [`SimdConfig`]: by default the best the CPU has, narrowed or forced by the
//! config or by the environment variable `QWEN3VL_SIMD=scalar|sse4.1|avx2|avx512`.

use std::fmt;

/// A SIMD level. Each level implies the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Scalar,
    /// SSE4.1 (128-bit, 4 f32 lanes).
    Sse41,
    /// AVX2 with FMA (256-bit, 8 f32 lanes).
    Avx2,
    /// AVX-512 F+BW+VL (512-bit, 16 f32 lanes), plus AVX2+FMA.
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Sse41, Isa::Avx2, Isa::Avx512];

    /// f32 lanes in one vector register of this level.
    pub const fn f32_lanes(self) -> usize {
        match self {
            Isa::Scalar => 1,
            Isa::Sse41 => 4,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }

    /// The spelling used by `QWEN3VL_SIMD` and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Sse41 => "sse4.1",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Result<Isa, IsaError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "generic" => Ok(Isa::Scalar),
            "sse4.1" | "sse41" | "sse4_1" | "sse" => Ok(Isa::Sse41),
            "avx2" => Ok(Isa::Avx2),
            "avx512" | "avx-512" | "avx512f" => Ok(Isa::Avx512),
            other => Err(IsaError::Unknown(other.to_string())),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsaError {
    #[error("unknown SIMD level {0:?}: expected one of scalar, sse4.1, avx2, avx512")]
    Unknown(String),
    #[error("SIMD level {wanted} was requested ({source_}) but this CPU does not support it (missing: {missing}); the best available is {best}")]
    Unsupported {
        wanted: Isa,
        source_: String,
        missing: String,
        best: Isa,
    },
    #[error("SIMD level {0} was requested but is disabled in the SimdConfig")]
    Disabled(Isa),
    #[error("QWEN3VL_BF16_DOT={0:?}: expected auto, on or off")]
    Bf16Dot(String),
    #[error("QWEN3VL_AMX={0:?}: expected on or off")]
    Amx(String),
    #[error("QWEN3VL_VNNI={0:?}: expected on or off")]
    Vnni(String),
}

/// CPU features relevant to the kernels, as detected on this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub sse41: bool,
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512dq: bool,
    /// `vdpbf16ps` / `vcvtne2ps2bf16` (AVX512_BF16).
    pub avx512_bf16: bool,
    /// `vpdpbusd` (AVX512_VNNI).
    pub avx512_vnni: bool,
    /// The VEX `vpdpbusd`/`vpdpwssd` on ymm (AVX-VNNI: Alder Lake, Sapphire Rapids, Zen 5).
    pub avx_vnni: bool,
    /// AMX tiles with `tdpbf16ps` (AMX-TILE + AMX-BF16, with AVX512_BF16), usable by this process (the OS
    /// saves the tile state and granted the permission; see `x86::amx`).
    pub amx_bf16: bool,
}

impl Features {
    /// Detect the host's features (CPUID + OS-saved state). Cached after the first call.
    pub fn detect() -> Features {
        static CACHE: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
        *CACHE.get_or_init(Self::detect_uncached)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect_uncached() -> Features {
        Features {
            sse41: is_x86_feature_detected!("sse4.1"),
            avx2: is_x86_feature_detected!("avx2"),
            fma: is_x86_feature_detected!("fma"),
            f16c: is_x86_feature_detected!("f16c"),
            avx512f: is_x86_feature_detected!("avx512f"),
            avx512bw: is_x86_feature_detected!("avx512bw"),
            avx512vl: is_x86_feature_detected!("avx512vl"),
            avx512dq: is_x86_feature_detected!("avx512dq"),
            avx512_bf16: is_x86_feature_detected!("avx512bf16"),
            avx512_vnni: is_x86_feature_detected!("avx512vnni"),
            avx_vnni: is_x86_feature_detected!("avxvnni"),
            amx_bf16: is_x86_feature_detected!("avx512bf16") && crate::x86::amx::enable(),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect_uncached() -> Features {
        Features::default()
    }

    /// Whether every feature a level needs is present; if not, the missing ones.
    pub fn missing_for(&self, isa: Isa) -> Vec<&'static str> {
        let mut m = Vec::new();
        let mut need = |ok: bool, name: &'static str| {
            if !ok {
                m.push(name)
            }
        };
        if isa >= Isa::Sse41 {
            need(self.sse41, "sse4.1");
        }
        if isa >= Isa::Avx2 {
            need(self.avx2, "avx2");
            need(self.fma, "fma");
        }
        if isa >= Isa::Avx512 {
            need(self.avx512f, "avx512f");
            need(self.avx512bw, "avx512bw");
            need(self.avx512vl, "avx512vl");
        }
        m
    }

    pub fn supports(&self, isa: Isa) -> bool {
        self.missing_for(isa).is_empty()
    }

    /// The best level this CPU supports.
    pub fn best(&self) -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|&&i| self.supports(i))
            .unwrap_or(&Isa::Scalar)
    }

    /// The levels this CPU supports, lowest first (always includes scalar).
    pub fn available(&self) -> Vec<Isa> {
        Isa::ALL
            .iter()
            .copied()
            .filter(|&i| self.supports(i))
            .collect()
    }

    /// Names of the detected features, for reports.
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.sse41, "sse4.1"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.f16c, "f16c"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vl, "avx512vl"),
            (self.avx512dq, "avx512dq"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.avx512_vnni, "avx512_vnni"),
            (self.avx_vnni, "avx_vnni"),
            (self.amx_bf16, "amx_bf16"),
        ];
        all.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect()
    }
}

/// Which levels may be used. The default allows every level and forces none; `QWEN3VL_SIMD` is applied by
/// [`SimdConfig::from_env`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimdConfig {
    enabled: [bool; 4],
    force: Option<Isa>,
    /// Where the forced level came from (for messages): "QWEN3VL_SIMD", "config", ...
    force_source: String,
    /// Whether the `Fast` paths use the bf16 dot-product instruction (`vdpbf16ps`) where the CPU has it.
    pub bf16_dot: Bf16Dot,
    /// Whether the `Fast` matmul of 16 rows and more runs on AMX tiles where the process may use them.
    pub amx: bool,
    /// Whether the kernels use VNNI (`vpdpbusd` / `vpdpwssd`) where the CPU has it (`QWEN3VL_VNNI`).
    pub vnni: bool,
}

/// When the `Fast` matmul and attention paths run on `vdpbf16ps` (AVX512_BF16, AVX-512 level only).
/// Its throughput differs by CPU: twice the f32 FMA peak on AMD Zen 4, half of it on some Intel Xeons
/// (measured: 104 vs 207 GFLOP/s on 2 cores). Where it does not pay, `Fast` runs the exact kernels (f32
/// FMA on widened bf16 weights), which are then both faster and exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Dot {
    /// Use it if a one-time probe at start (≈ 2 ms, one thread) finds it faster than f32 FMA.
    Auto,
    /// Use it whenever the CPU has it.
    On,
    /// Never use it.
    Off,
}

impl Bf16Dot {
    /// `auto`, `on` / `1`, `off` / `0` (the values of `QWEN3VL_BF16_DOT`).
    pub fn parse(s: &str) -> Result<Bf16Dot, IsaError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Bf16Dot::Auto),
            "on" | "1" | "true" => Ok(Bf16Dot::On),
            "off" | "0" | "false" => Ok(Bf16Dot::Off),
            _ => Err(IsaError::Bf16Dot(s.to_string())),
        }
    }
}

/// `on` / `1` / `auto` (the default: use AMX where present) or `off` / `0` (the values of `QWEN3VL_AMX`).
pub fn parse_amx(s: &str) -> Result<bool, IsaError> {
    parse_on_off(s).ok_or_else(|| IsaError::Amx(s.to_string()))
}

/// As [`parse_amx`], for `QWEN3VL_VNNI` (off: the kernels act as if the CPU had neither AVX512_VNNI nor
/// AVX-VNNI, e.g. to measure a Zen 3's AVX2 path on a newer CPU).
pub fn parse_vnni(s: &str) -> Result<bool, IsaError> {
    parse_on_off(s).ok_or_else(|| IsaError::Vnni(s.to_string()))
}

fn parse_on_off(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "auto" | "" => Some(true),
        "off" | "0" | "false" => Some(false),
        _ => None,
    }
}

impl Default for SimdConfig {
    fn default() -> Self {
        SimdConfig {
            enabled: [true; 4],
            force: None,
            force_source: String::new(),
            bf16_dot: Bf16Dot::Auto,
            amx: true,
            vnni: true,
        }
    }
}

/// The outcome of choosing a level: the level, the features, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub isa: Isa,
    pub features: Features,
    pub reason: String,
}

impl SimdConfig {
    /// The default config, with `QWEN3VL_SIMD`, `QWEN3VL_BF16_DOT`, `QWEN3VL_AMX` and `QWEN3VL_VNNI`
    /// applied if set (an unknown value is an error).
    pub fn from_env() -> Result<SimdConfig, IsaError> {
        let mut c = SimdConfig::default();
        if let Ok(v) = std::env::var("QWEN3VL_SIMD") {
            if !v.trim().is_empty() {
                c.force = Some(Isa::parse(&v)?);
                c.force_source = format!("QWEN3VL_SIMD={v}");
            }
        }
        if let Ok(v) = std::env::var("QWEN3VL_BF16_DOT") {
            c.bf16_dot = Bf16Dot::parse(&v)?;
        }
        if let Ok(v) = std::env::var("QWEN3VL_AMX") {
            c.amx = parse_amx(&v)?;
        }
        if let Ok(v) = std::env::var("QWEN3VL_VNNI") {
            c.vnni = parse_vnni(&v)?;
        }
        Ok(c)
    }

    /// Force one level (an error at [`SimdConfig::select`] if the CPU lacks it).
    pub fn force(mut self, isa: Isa) -> Self {
        self.force = Some(isa);
        self.force_source = "SimdConfig::force".into();
        self
    }

    pub fn forced(&self) -> Option<Isa> {
        self.force
    }

    /// Enable or disable one level (scalar cannot be disabled).
    pub fn enable(mut self, isa: Isa, on: bool) -> Self {
        if isa != Isa::Scalar {
            self.enabled[isa.index()] = on;
        }
        self
    }

    /// Choose a level for `features`.
    pub fn select_for(&self, features: Features) -> Result<Selection, IsaError> {
        let best = features.best();
        if let Some(want) = self.force {
            if !self.enabled[want.index()] {
                return Err(IsaError::Disabled(want));
            }
            let missing = features.missing_for(want);
            if !missing.is_empty() {
                return Err(IsaError::Unsupported {
                    wanted: want,
                    source_: self.force_source.clone(),
                    missing: missing.join(", "),
                    best,
                });
            }
            return Ok(Selection {
                isa: want,
                features,
                reason: format!("forced by {}", self.force_source),
            });
        }
        let isa = *Isa::ALL
            .iter()
            .rev()
            .find(|&&i| self.enabled[i.index()] && features.supports(i))
            .unwrap_or(&Isa::Scalar);
        let reason = if isa == best {
            format!(
                "best level this CPU supports ({})",
                features.names().join(" ")
            )
        } else {
            format!("best level enabled in the config (the CPU supports up to {best})")
        };
        Ok(Selection {
            isa,
            features,
            reason,
        })
    }

    /// Choose a level for this host.
    pub fn select(&self) -> Result<Selection, IsaError> {
        self.select_for(Features::detect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zen4() -> Features {
        Features {
            sse41: true,
            avx2: true,
            fma: true,
            f16c: true,
            avx512f: true,
            avx512bw: true,
            avx512vl: true,
            avx512dq: true,
            avx512_bf16: true,
            avx512_vnni: true,
            avx_vnni: false,
            amx_bf16: false,
        }
    }

    #[test]
    fn bf16_dot_policy_parses_and_refuses_unknown_values() {
        assert_eq!(Bf16Dot::parse("auto").unwrap(), Bf16Dot::Auto);
        assert_eq!(Bf16Dot::parse(" ON ").unwrap(), Bf16Dot::On);
        assert_eq!(Bf16Dot::parse("0").unwrap(), Bf16Dot::Off);
        let e = Bf16Dot::parse("maybe").unwrap_err();
        assert_eq!(
            e.to_string(),
            "QWEN3VL_BF16_DOT=\"maybe\": expected auto, on or off"
        );
    }

    #[test]
    fn amx_policy_parses_and_refuses_unknown_values() {
        assert!(parse_amx("auto").unwrap());
        assert!(parse_amx(" On ").unwrap());
        assert!(!parse_amx("0").unwrap());
        assert!(!parse_amx("off").unwrap());
        let e = parse_amx("tiles").unwrap_err();
        assert_eq!(e.to_string(), "QWEN3VL_AMX=\"tiles\": expected on or off");
        assert!(!parse_vnni("off").unwrap());
        assert!(parse_vnni(" ON ").unwrap());
        let e = parse_vnni("dp").unwrap_err();
        assert_eq!(e.to_string(), "QWEN3VL_VNNI=\"dp\": expected on or off");
    }

    #[test]
    fn parse_names_round_trip() {
        for i in Isa::ALL {
            assert_eq!(Isa::parse(i.name()).unwrap(), i);
        }
        assert!(matches!(Isa::parse("neon"), Err(IsaError::Unknown(_))));
    }

    #[test]
    fn lanes_per_level() {
        let lanes: Vec<usize> = Isa::ALL.iter().map(|i| i.f32_lanes()).collect();
        assert_eq!(lanes, vec![1, 4, 8, 16]);
    }

    #[test]
    fn best_and_disable() {
        let f = zen4();
        assert_eq!(
            SimdConfig::default().select_for(f).unwrap().isa,
            Isa::Avx512
        );
        let c = SimdConfig::default().enable(Isa::Avx512, false);
        assert_eq!(c.select_for(f).unwrap().isa, Isa::Avx2);
        let c = c.enable(Isa::Avx2, false).enable(Isa::Sse41, false);
        assert_eq!(c.select_for(f).unwrap().isa, Isa::Scalar);
    }

    #[test]
    fn forcing_a_missing_level_is_an_error() {
        let f = Features {
            sse41: true,
            avx2: true,
            fma: false,
            ..Default::default()
        };
        assert_eq!(f.best(), Isa::Sse41);
        let err = SimdConfig::default()
            .force(Isa::Avx2)
            .select_for(f)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("avx2") && msg.contains("fma") && msg.contains("sse4.1"),
            "{msg}"
        );
        let err = SimdConfig::default()
            .force(Isa::Avx512)
            .enable(Isa::Avx512, false)
            .select_for(zen4());
        assert_eq!(err, Err(IsaError::Disabled(Isa::Avx512)));
    }

    #[test]
    fn no_features_means_scalar() {
        let f = Features::default();
        assert_eq!(
            SimdConfig::default().select_for(f).unwrap().isa,
            Isa::Scalar
        );
        assert_eq!(f.available(), vec![Isa::Scalar]);
    }

    #[test]
    fn host_detection_is_consistent() {
        let f = Features::detect();
        // Each level implies the lower ones on real hardware.
        let avail = f.available();
        for w in avail.windows(2) {
            assert!(w[0] < w[1]);
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(f.avx512f, std::arch::is_x86_feature_detected!("avx512f"));
    }
}
