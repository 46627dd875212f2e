//! What `qwen3vl cpu` reports: the CPU's name, its SIMD features and the level the kernels will use.

use qwen3vl_kernels::isa::{Bf16Dot, Features, Isa, IsaError, SimdConfig};
use qwen3vl_kernels::{roofline, Kernels};

/// The host CPU as the kernels see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuReport {
    /// Marketing name ("model name" of /proc/cpuinfo, else the CPUID brand string, else "unknown").
    pub cpu: String,
    /// Detected features relevant to the kernels (CPUID + OS-saved state).
    pub features: Vec<&'static str>,
    /// The level the kernels will use (`QWEN3VL_SIMD` applied).
    pub level: &'static str,
    /// Why that level was chosen.
    pub reason: String,
    /// Levels this CPU supports, lowest first.
    pub available: Vec<&'static str>,
    /// Whether the `fast` precision runs on the bf16 dot product (`vdpbf16ps`), and why.
    pub bf16_dot: String,
    /// Whether and where AMX tiles are used, in words.
    pub amx: String,
    /// The quantized matmuls' kernel (VNNI where the CPU has it, unless `QWEN3VL_VNNI=off`).
    pub quant: String,
    /// f32 lanes of one vector register, per level (all levels, supported or not).
    pub f32_lanes: std::collections::BTreeMap<&'static str, usize>,
}

impl CpuReport {
    /// Detect the host. An error only if `QWEN3VL_SIMD` names an unknown or unsupported level.
    pub fn detect() -> Result<CpuReport, IsaError> {
        let config = SimdConfig::from_env()?;
        let sel = config.select()?;
        let f = Features::detect();
        let kern = Kernels::with_config(&config)?;
        let used = kern.bf16_dot();
        let amx = if kern.amx() {
            format!(
                "used for the fast matmuls (bf16 weights: {}+ rows, quantized: {}+ rows): tdpbf16ps tiles",
                qwen3vl_kernels::matmul::AMX_MIN_M,
                qwen3vl_kernels::matmul::QUANT_DEQUANT_MIN_M
            )
        } else if !f.amx_bf16 {
            "not available (needs AMX-TILE and AMX-BF16, and the OS's permission)".to_string()
        } else if !config.amx {
            "not used (QWEN3VL_AMX=off)".to_string()
        } else {
            "not used (needs the avx512 level)".to_string()
        };
        let bf16_dot = match (roofline::bf16_dot_ratio(), config.bf16_dot) {
            _ if sel.isa != Isa::Avx512 || !f.avx512_bf16 => {
                "not used (needs the avx512 level with avx512_bf16)".to_string()
            }
            (_, Bf16Dot::On | Bf16Dot::Off) => format!(
                "{} (forced by QWEN3VL_BF16_DOT)",
                if used { "used" } else { "not used" }
            ),
            (Some(r), Bf16Dot::Auto) => format!(
                "{}: its throughput is {r:.2}x f32 FMA's on this CPU",
                if used {
                    "used"
                } else {
                    "not used (fast = the exact f32 kernels)"
                }
            ),
            (None, Bf16Dot::Auto) => "not used".to_string(),
        };
        let quant = format!(
            "{}{}",
            kern.quant_kernel(),
            if !config.vnni && (f.avx512_vnni || f.avx_vnni) {
                " (VNNI not used: QWEN3VL_VNNI=off)"
            } else {
                ""
            }
        );
        Ok(CpuReport {
            cpu: cpu_name(),
            quant,
            features: f.names(),
            level: sel.isa.name(),
            reason: sel.reason,
            bf16_dot,
            amx,
            available: f.available().iter().map(|i| i.name()).collect(),
            f32_lanes: Isa::ALL.iter().map(|i| (i.name(), i.f32_lanes())).collect(),
        })
    }
}

/// The CPU's name: /proc/cpuinfo "model name", else the CPUID brand string, else "unknown".
pub fn cpu_name() -> String {
    if let Ok(s) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(name) = model_name_from_cpuinfo(&s) {
            return name;
        }
    }
    cpuid_brand().unwrap_or_else(|| "unknown".to_string())
}

/// The first non-empty "model name" line of a /proc/cpuinfo text.
pub fn model_name_from_cpuinfo(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, v)| k.trim() == "model name" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn cpuid_brand() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    // Safety: CPUID exists on every x86-64 CPU; leaves above the reported maximum are not queried.
    let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_ext < 0x8000_0004 {
        return None;
    }
    let mut bytes = Vec::with_capacity(48);
    for leaf in 0x8000_0002u32..=0x8000_0004 {
        let r = unsafe { __cpuid(leaf) };
        for reg in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend_from_slice(&reg.to_le_bytes());
        }
    }
    let s = String::from_utf8_lossy(&bytes);
    let s = s.trim_matches(char::from(0)).trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_brand() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_name() {
        let t = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\nflags\t: fpu\n";
        assert_eq!(
            model_name_from_cpuinfo(t).as_deref(),
            Some("AMD EPYC 9654 96-Core Processor")
        );
        assert_eq!(model_name_from_cpuinfo("model name\t:   \n"), None);
        assert_eq!(model_name_from_cpuinfo(""), None);
    }

    #[test]
    fn report_is_consistent() {
        let r = CpuReport::detect().unwrap();
        assert!(r.available.contains(&r.level) || std::env::var("QWEN3VL_SIMD").is_ok());
        assert_eq!(r.f32_lanes["avx512"], 16);
        assert_eq!(r.f32_lanes["scalar"], 1);
        assert!(!r.cpu.is_empty());
    }
}
