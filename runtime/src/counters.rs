//! GPU performance counters (NVML) and model FLOP utilization.
//!
//! `Counters` samples one GPU through NVML: power, the board's cumulative energy counter, SM and
//! memory clocks, utilization, temperature, memory used and throttle reasons. nvml-wrapper loads
//! libnvidia-ml at run time, so this builds everywhere; on a machine without NVML `open` returns
//! one sentence saying why counters are off, and callers simply carry on without them.
//! `Summary` turns successive samples into mean power, energy and joules per token.
//! `peak_tflops` / `mfu` give model FLOP utilization against a table of dense BF16 peaks.

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;

/// An open NVML handle on one device. The `Device` handle borrows `Nvml`, so it is looked up
/// per sample (a cheap table lookup inside NVML) instead of being stored.
pub struct Counters {
    nvml: Nvml,
    index: u32,
    pub device_name: String,
}

/// One reading. Fields NVML cannot provide on this device are `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the UNIX epoch when the sample was taken.
    pub time_s: f64,
    pub power_w: Option<f64>,
    /// The board's cumulative energy counter since driver load, in millijoules.
    pub energy_mj: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub gpu_util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
    pub temperature_c: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    /// NVML's throttle reason bits (0: not throttled) and their names.
    pub throttle_bits: Option<u64>,
    pub throttle_reasons: Vec<String>,
}

impl Counters {
    /// Opens NVML and checks that `device_index` exists. The error is one sentence ending in
    /// "counters off", meant to be printed as is.
    pub fn open(device_index: u32) -> Result<Counters, String> {
        // Driver-only hosts and containers often ship only the versioned library, while
        // `Nvml::init` opens the unversioned development name: try the versioned one first.
        let nvml = Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
            .or_else(|_| Nvml::init())
            .map_err(|e| format!("NVML not available: {e}; counters off"))?;
        let device_name = nvml
            .device_by_index(device_index)
            .and_then(|d| d.name())
            .map_err(|e| format!("NVML has no GPU {device_index}: {e}; counters off"))?;
        Ok(Counters {
            nvml,
            index: device_index,
            device_name,
        })
    }

    pub fn sample(&self) -> Sample {
        let time_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let Ok(d) = self.nvml.device_by_index(self.index) else {
            return Sample {
                time_s,
                ..Sample::default()
            };
        };
        let util = d.utilization_rates().ok();
        let throttle = d.current_throttle_reasons().ok();
        Sample {
            time_s,
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
            energy_mj: d.total_energy_consumption().ok(),
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
            gpu_util_pct: util.as_ref().map(|u| u.gpu),
            mem_util_pct: util.as_ref().map(|u| u.memory),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            memory_used_bytes: d.memory_info().ok().map(|m| m.used),
            throttle_bits: throttle.map(|t| t.bits()),
            throttle_reasons: throttle
                .map(|t| t.iter_names().map(|(n, _)| n.to_string()).collect())
                .unwrap_or_default(),
        }
    }
}

impl Sample {
    /// A JSON object (absent readings are `null`).
    pub fn to_json(&self) -> String {
        fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
            v.as_ref()
                .map(|x| x.to_string())
                .unwrap_or_else(|| "null".into())
        }
        let reasons: Vec<String> = self
            .throttle_reasons
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect();
        format!(
            "{{\"time_s\":{:.3},\"power_w\":{},\"energy_mj\":{},\"sm_clock_mhz\":{},\"mem_clock_mhz\":{},\"gpu_util_pct\":{},\"mem_util_pct\":{},\"temperature_c\":{},\"memory_used_bytes\":{},\"throttle_bits\":{},\"throttle_reasons\":[{}]}}",
            self.time_s,
            opt(&self.power_w),
            opt(&self.energy_mj),
            opt(&self.sm_clock_mhz),
            opt(&self.mem_clock_mhz),
            opt(&self.gpu_util_pct),
            opt(&self.mem_util_pct),
            opt(&self.temperature_c),
            opt(&self.memory_used_bytes),
            opt(&self.throttle_bits),
            reasons.join(",")
        )
    }

    /// A short human line for the training log.
    pub fn short(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.power_w {
            parts.push(format!("{p:.0} W"));
        }
        if let Some(c) = self.sm_clock_mhz {
            parts.push(format!("sm {c} MHz"));
        }
        if let Some(u) = self.gpu_util_pct {
            parts.push(format!("util {u}%"));
        }
        if let Some(t) = self.temperature_c {
            parts.push(format!("{t} C"));
        }
        if let Some(m) = self.memory_used_bytes {
            parts.push(format!("mem {:.1} GiB", m as f64 / (1u64 << 30) as f64));
        }
        if !self.throttle_reasons.is_empty() {
            parts.push(format!("throttle {}", self.throttle_reasons.join("|")));
        }
        parts.join(", ")
    }
}

/// Accumulates samples over a run: energy from the first to the last energy counter reading
/// (exact, the board integrates it), mean power over the samples that had one.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    first_energy_mj: Option<u64>,
    last_energy_mj: Option<u64>,
    power_sum_w: f64,
    power_samples: u64,
    pub tokens: u64,
}

impl Summary {
    /// Adds a sample and the tokens processed since the previous one.
    pub fn add(&mut self, s: &Sample, tokens_since_last: u64) {
        if let Some(e) = s.energy_mj {
            self.first_energy_mj.get_or_insert(e);
            self.last_energy_mj = Some(e);
        }
        if let Some(p) = s.power_w {
            self.power_sum_w += p;
            self.power_samples += 1;
        }
        self.tokens += tokens_since_last;
    }

    pub fn mean_power_w(&self) -> Option<f64> {
        (self.power_samples > 0).then(|| self.power_sum_w / self.power_samples as f64)
    }

    pub fn energy_j(&self) -> Option<f64> {
        Some(self.last_energy_mj?.saturating_sub(self.first_energy_mj?) as f64 / 1000.0)
    }

    /// Joules per token over the tokens added after the first energy reading.
    pub fn joules_per_token(&self) -> Option<f64> {
        let e = self.energy_j()?;
        (self.tokens > 0 && e > 0.0).then(|| e / self.tokens as f64)
    }
}

/// Dense BF16 tensor-core peaks in TFLOP/s (no sparsity), by a substring of the NVML device
/// name. More specific names come first (\"H100 PCIe\" before \"H100\").
pub const PEAK_BF16_TFLOPS: &[(&str, f64)] = &[
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0), // SXM
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 5090", 209.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0), // FP16 (V100 has no BF16)
];

/// The peak to compute MFU against: `MXGPT_PEAK_TFLOPS` if set (the override for devices the
/// table lacks, or for a CPU's measured GEMM ceiling), else the table entry for `device_name`.
pub fn peak_tflops(device_name: &str) -> Result<Option<f64>, String> {
    if let Ok(v) = std::env::var("MXGPT_PEAK_TFLOPS") {
        let p: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("MXGPT_PEAK_TFLOPS='{v}' is not a number of TFLOP/s"))?;
        if !(p > 0.0 && p.is_finite()) {
            return Err(format!(
                "MXGPT_PEAK_TFLOPS='{v}' must be a positive number of TFLOP/s"
            ));
        }
        return Ok(Some(p));
    }
    Ok(table_peak_tflops(device_name))
}

/// The table entry alone (no environment override).
pub fn table_peak_tflops(device_name: &str) -> Option<f64> {
    PEAK_BF16_TFLOPS
        .iter()
        .find(|(n, _)| device_name.contains(n))
        .map(|&(_, p)| p)
}

/// Model FLOP utilization: achieved model FLOP/s over the peak (a fraction, 0..1).
pub fn mfu(flops_per_token: f64, tokens_per_s: f64, peak_tflops: f64) -> f64 {
    flops_per_token * tokens_per_s / (peak_tflops * 1e12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_table_prefers_specific_names() {
        assert_eq!(table_peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(table_peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(table_peak_tflops("NVIDIA GeForce RTX 4090"), Some(165.0));
        assert_eq!(table_peak_tflops("NVIDIA L4"), Some(121.0));
        assert_eq!(table_peak_tflops("Intel Xeon"), None);
    }

    #[test]
    fn mfu_by_hand() {
        // llm.c's 124M on 8xA100: ~0.875 GFLOP/token (6N + attention), 524288 tokens in 0.3 s
        // over 8 GPUs of 312 TFLOP/s -> about 61%.
        let m = mfu(0.875e9, 524_288.0 / 0.3 / 8.0, 312.0);
        assert!((m - 0.6127).abs() < 1e-3, "{m}");
    }

    #[test]
    fn summary_energy_and_power() {
        let mut s = Summary::default();
        let at = |e, p| Sample {
            energy_mj: Some(e),
            power_w: Some(p),
            ..Sample::default()
        };
        s.add(&at(10_000, 300.0), 0);
        s.add(&at(40_000, 500.0), 1000);
        s.add(&at(70_000, 400.0), 2000);
        assert_eq!(s.energy_j(), Some(60.0));
        assert_eq!(s.mean_power_w(), Some(400.0));
        assert_eq!(s.joules_per_token(), Some(0.02));
        assert_eq!(Summary::default().joules_per_token(), None);
    }

    #[test]
    fn sample_json_parses_with_nulls() {
        let s = Sample {
            time_s: 1.5,
            power_w: Some(250.5),
            throttle_reasons: vec!["SW_POWER_CAP".into()],
            ..Sample::default()
        };
        let j = s.to_json();
        assert!(
            j.contains("\"power_w\":250.5")
                && j.contains("\"energy_mj\":null")
                && j.contains("[\"SW_POWER_CAP\"]"),
            "{j}"
        );
    }

    #[test]
    fn open_without_nvml_is_one_clear_sentence() {
        // On machines with a GPU this opens; without NVML it must say why, in one line.
        match Counters::open(0) {
            Ok(c) => assert!(!c.device_name.is_empty()),
            Err(e) => assert!(e.ends_with("counters off") && !e.contains('\n'), "{e}"),
        }
    }
}
