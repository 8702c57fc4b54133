//! Temperatures from `/sys/class/thermal/thermal_zone*/temp` (sensor = the zone's `type`)
//! and `/sys/class/hwmon/hwmon*/temp*_input` (sensor = `name/label`, the label from
//! `temp*_label` or else `tempN`). Values are millidegrees Celsius.
//!
//! A host without either class reports no temperature and no error. A sensor whose file
//! cannot be read or parsed is skipped and its error kept. Sensor names that would repeat
//! (two `acpitz` zones, two `coretemp` chips) get their directory appended, so every
//! sample has a distinct label.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::{CollectError, ErrorLog, read_if_present};

/// One temperature reading.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reading {
    pub sensor: String,
    pub celsius: f64,
}

/// Every temperature under `sys_root`, at most `max`, thermal zones first.
pub(crate) fn read_temperatures(
    sys_root: &Path,
    max: usize,
    errors: &mut ErrorLog,
) -> Vec<Reading> {
    // (sensor, directory, value)
    let mut found: Vec<(String, String, f64)> = Vec::new();
    let thermal = sys_root.join("class/thermal");
    for zone in numbered_entries(&thermal, "thermal_zone") {
        let dir = thermal.join(&zone);
        let Some(celsius) = read_millidegrees(&dir.join("temp"), errors) else {
            continue;
        };
        let sensor = read_name(&dir.join("type")).unwrap_or_else(|| zone.clone());
        found.push((sensor, zone, celsius));
    }
    let hwmon = sys_root.join("class/hwmon");
    for chip in numbered_entries(&hwmon, "hwmon") {
        let mut dir = hwmon.join(&chip);
        let chip_name = read_name(&dir.join("name")).unwrap_or_else(|| chip.clone());
        let mut inputs = temperature_inputs(&dir);
        if inputs.is_empty() {
            // Kernels before 3.x kept the attributes in the device directory.
            dir = dir.join("device");
            inputs = temperature_inputs(&dir);
        }
        for input in inputs {
            let Some(celsius) = read_millidegrees(&dir.join(format!("{input}_input")), errors)
            else {
                continue;
            };
            let label = read_name(&dir.join(format!("{input}_label"))).unwrap_or(input);
            found.push((format!("{chip_name}/{label}"), chip.clone(), celsius));
        }
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (sensor, _, _) in &found {
        *counts.entry(sensor.clone()).or_default() += 1;
    }
    found
        .into_iter()
        .take(max)
        .map(|(sensor, dir, celsius)| {
            let sensor = if counts.get(&sensor).copied().unwrap_or(0) > 1 {
                format!("{sensor}/{dir}")
            } else {
                sensor
            };
            Reading { sensor, celsius }
        })
        .collect()
}

/// Entries of `dir` named `prefix<number>`, in numeric order; nothing if `dir` is absent.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbered: Vec<(u32, String)> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let number = name.strip_prefix(prefix)?.parse().ok()?;
            Some((number, name))
        })
        .collect();
    numbered.sort();
    numbered.into_iter().map(|(_, name)| name).collect()
}

/// `tempN` for every `tempN_input` in `dir`, in numeric order.
fn temperature_inputs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<(u32, String)> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let base = name.strip_suffix("_input")?;
            let number = base.strip_prefix("temp")?.parse().ok()?;
            Some((number, base.to_owned()))
        })
        .collect();
    inputs.sort();
    inputs.into_iter().map(|(_, base)| base).collect()
}

fn read_name(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

fn read_millidegrees(path: &Path, errors: &mut ErrorLog) -> Option<f64> {
    let text = match read_if_present(path) {
        Ok(Some(text)) => text,
        // A zone that disappeared between listing and reading.
        Ok(None) => return None,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    match text.trim().parse::<i64>() {
        Ok(millidegrees) => Some(millidegrees as f64 / 1000.0),
        Err(_) => {
            errors.push(CollectError::Malformed {
                path: path.to_owned(),
                reason: format!(
                    "{:?} is not a temperature in millidegrees Celsius",
                    text.trim()
                ),
            });
            None
        }
    }
}
