//! Device models: what each simulated device measures, as typed values with
//! ground truth, and the seeded physiology that produces them. Bytes are made
//! by [`crate::encode`]; the D-Bus side is in [`crate::bluez`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The kinds of simulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Heart-rate strap (0x180D), 1 Hz notifications with RR intervals.
    Hr,
    /// Blood-pressure cuff (0x1810), indications, intermediate cuff pressure, pairing required.
    Bp,
    /// Pulse oximeter (0x1822), continuous notifications + spot-check indications.
    Spo2,
    /// Thermometer (0x1809), indications, °C or °F.
    Temp,
    /// Glucose meter (0x1808), stored records via RACP, pairing required.
    Glucose,
    /// Weight scale (0x181D), indications, kg or lb, user id.
    Scale,
    /// Body-composition scale (0x181B): every field of 0x2A9C, sent as the
    /// two packets of a multiple-packet measurement (32 bytes do not fit
    /// one indication at the default MTU), kg or lb, user id.
    Bodycomp,
}

impl DeviceKind {
    /// All kinds, in a fixed order.
    pub const ALL: [DeviceKind; 7] = [
        DeviceKind::Hr,
        DeviceKind::Bp,
        DeviceKind::Spo2,
        DeviceKind::Temp,
        DeviceKind::Glucose,
        DeviceKind::Scale,
        DeviceKind::Bodycomp,
    ];

    /// The short name used on the command line (`hr`, `bp`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Hr => "hr",
            DeviceKind::Bp => "bp",
            DeviceKind::Spo2 => "spo2",
            DeviceKind::Temp => "temp",
            DeviceKind::Glucose => "glucose",
            DeviceKind::Scale => "scale",
            DeviceKind::Bodycomp => "bodycomp",
        }
    }

    /// Parse a short name.
    pub fn parse(s: &str) -> Option<DeviceKind> {
        DeviceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A byte that goes into the device address, so addresses tell the kind.
    pub fn code(self) -> u8 {
        match self {
            DeviceKind::Hr => 1,
            DeviceKind::Bp => 2,
            DeviceKind::Spo2 => 3,
            DeviceKind::Temp => 4,
            DeviceKind::Glucose => 5,
            DeviceKind::Scale => 6,
            DeviceKind::Bodycomp => 7,
        }
    }

    /// The SIG service the device advertises.
    pub fn service_uuid16(self) -> u16 {
        match self {
            DeviceKind::Hr => 0x180D,
            DeviceKind::Bp => 0x1810,
            DeviceKind::Spo2 => 0x1822,
            DeviceKind::Temp => 0x1809,
            DeviceKind::Glucose => 0x1808,
            DeviceKind::Scale => 0x181D,
            DeviceKind::Bodycomp => 0x181B,
        }
    }

    /// GAP appearance value.
    pub fn appearance(self) -> u16 {
        match self {
            DeviceKind::Hr => 0x0341,       // heart rate belt
            DeviceKind::Bp => 0x0381,       // blood pressure: arm
            DeviceKind::Spo2 => 0x0C41,     // pulse oximeter: fingertip
            DeviceKind::Temp => 0x0301,     // thermometer: ear
            DeviceKind::Glucose => 0x0400,  // glucose meter
            DeviceKind::Scale => 0x0C80,    // weight scale
            DeviceKind::Bodycomp => 0x0C80, // weight scale (no body-composition sub-category)
        }
    }

    /// Whether its measurements carry a time stamp from its own clock (and
    /// it has a Current Time Service to read and set that clock).
    pub fn stamps_time(self) -> bool {
        self != DeviceKind::Hr
    }

    /// Whether it is a shared device with user slots (User Data Service
    /// 0x181C): a cuff or a scale a household shares.
    pub fn has_users(self) -> bool {
        matches!(
            self,
            DeviceKind::Bp | DeviceKind::Scale | DeviceKind::Bodycomp
        )
    }

    /// Whether the measurement characteristics need pairing (encryption).
    pub fn requires_pairing(self) -> bool {
        matches!(self, DeviceKind::Bp | DeviceKind::Glucose)
    }

    /// Whether this model serves its Device Information strings in fixed
    /// 20-byte fields padded with NULs, as cheap scales and thermometers
    /// with C-string firmware do (the SIG's strings have no terminator: a
    /// host must cut the padding, not register it).
    pub fn pads_device_information(self) -> bool {
        matches!(
            self,
            DeviceKind::Temp | DeviceKind::Scale | DeviceKind::Bodycomp
        )
    }

    /// Model number string (Device Information 0x2A24).
    pub fn model_number(self) -> &'static str {
        match self {
            DeviceKind::Hr => "HL-HRM-10",
            DeviceKind::Bp => "HL-BPM-20",
            DeviceKind::Spo2 => "HL-PLX-30",
            DeviceKind::Temp => "HL-THM-40",
            DeviceKind::Glucose => "HL-GLU-50",
            DeviceKind::Scale => "HL-WSC-60",
            DeviceKind::Bodycomp => "HL-BCS-70",
        }
    }
}

/// Units a blood-pressure cuff reports in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PressureUnit {
    /// mmHg.
    MmHg,
    /// kPa.
    KPa,
}

/// Units a thermometer reports in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TempUnit {
    /// °C.
    Celsius,
    /// °F.
    Fahrenheit,
}

/// Units a scale reports in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightUnit {
    /// kg (resolution 0.005 kg).
    Kilogram,
    /// lb (resolution 0.01 lb).
    Pound,
}

/// A civil UTC date-time as GATT Date Time carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateTime {
    /// Year (e.g. 2026).
    pub year: u16,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
}

impl DateTime {
    /// From seconds since the Unix epoch (UTC).
    pub fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Howard Hinnant's civil_from_days
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// Seconds since the Unix epoch (the inverse of [`DateTime::from_unix`]).
    pub fn to_unix(&self) -> i64 {
        let (y, m, d) = (
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Now (UTC), from the system clock.
    pub fn now() -> DateTime {
        DateTime::from_unix(unix_now())
    }
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A replayed past (`--replay-days`): the simulated world's clock starts
/// that far behind the system clock and runs `speed` times faster until it
/// has caught up, then follows the system clock. One per process.
#[derive(Debug)]
struct Replay {
    started: std::time::Instant,
    start_ms: i64,
    speed: f64,
}

static REPLAY: std::sync::OnceLock<Replay> = std::sync::OnceLock::new();

/// Start replaying the last `behind` at `speed` (from now). False if a
/// replay was already started in this process (the first one holds).
pub fn start_replay(behind: std::time::Duration, speed: f64) -> bool {
    let behind_ms = i64::try_from(behind.as_millis()).unwrap_or(i64::MAX);
    REPLAY
        .set(Replay {
            started: std::time::Instant::now(),
            start_ms: system_ms().saturating_sub(behind_ms),
            speed: if speed > 0.0 { speed } else { 1.0 },
        })
        .is_ok()
}

/// Is the simulated clock the system clock (no replay, or caught up)?
pub fn caught_up() -> bool {
    REPLAY.get().is_none_or(|r| r.replayed_ms() >= system_ms())
}

impl Replay {
    fn replayed_ms(&self) -> i64 {
        let run = self.started.elapsed().as_secs_f64() * 1000.0 * self.speed;
        self.start_ms.saturating_add(run as i64)
    }
}

/// Milliseconds since the Unix epoch by the simulated world's clock: the
/// system clock, or a replayed past until it catches up ([`start_replay`]).
pub fn unix_now_ms() -> i64 {
    let now = system_ms();
    match REPLAY.get() {
        Some(r) => r.replayed_ms().min(now),
        None => now,
    }
}

/// Seconds since the Unix epoch by the simulated world's clock ([`unix_now_ms`]).
pub fn unix_now() -> i64 {
    unix_now_ms().div_euclid(1000)
}

/// One measurement as the device takes it: typed values in the units of
/// DESIGN §3 (fixed point) plus what goes on the wire (unit choice).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Measurement {
    /// 0x2A37.
    HeartRate {
        /// beats per minute.
        bpm: u16,
        /// RR intervals in 1/1024 s.
        rr_1024: Vec<u16>,
        /// sensor contact detected.
        contact: bool,
    },
    /// 0x2A35 (indication).
    BloodPressure {
        /// systolic, mmHg ×10.
        systolic_x10: u32,
        /// diastolic, mmHg ×10.
        diastolic_x10: u32,
        /// mean arterial pressure, mmHg ×10.
        map_x10: u32,
        /// pulse, /min.
        pulse: u16,
        /// user id.
        user: u8,
        /// unit on the wire.
        unit: PressureUnit,
        /// time stamp.
        time: DateTime,
    },
    /// 0x2A36 (notification while inflating/deflating).
    CuffPressure {
        /// current cuff pressure, mmHg ×10.
        pressure_x10: u32,
        /// unit on the wire.
        unit: PressureUnit,
    },
    /// 0x2A5F continuous measurement.
    SpO2Continuous {
        /// SpO2 % ×10.
        spo2_x10: u32,
        /// pulse, /min.
        pulse: u16,
    },
    /// 0x2A5E spot-check measurement (indication).
    SpO2Spot {
        /// SpO2 % ×10.
        spo2_x10: u32,
        /// pulse, /min.
        pulse: u16,
        /// time stamp.
        time: DateTime,
    },
    /// 0x2A1C (indication).
    Temperature {
        /// °C ×100 (the truth; °F devices send the converted value).
        celsius_x100: i32,
        /// unit on the wire.
        unit: TempUnit,
        /// time stamp.
        time: DateTime,
    },
    /// 0x2A18 (a stored record, sent on RACP request).
    Glucose {
        /// record sequence number.
        seq: u16,
        /// mg/dL ×10 (whole mg/dL on the wire, as kg/L).
        mg_dl_x10: u32,
        /// time stamp.
        time: DateTime,
    },
    /// 0x2A9D (indication).
    Weight {
        /// grams (the truth; the wire has 5 g or 0.01 lb resolution).
        grams: u32,
        /// unit on the wire.
        unit: WeightUnit,
        /// user id.
        user: u8,
        /// time stamp.
        time: DateTime,
    },
    /// 0x2A9C (indication; two packets). Masses in grams (multiples of
    /// 5 g: what the SI wire carries exactly; lb scales round on the wire).
    BodyComposition {
        /// body fat, % ×10.
        body_fat_x10: u32,
        /// muscle, % ×10.
        muscle_pct_x10: u32,
        /// muscle mass, g.
        muscle_mass_g: u32,
        /// fat-free mass, g.
        fat_free_mass_g: u32,
        /// soft lean mass, g.
        soft_lean_mass_g: u32,
        /// body water mass, g.
        body_water_mass_g: u32,
        /// basal metabolism, kJ (per day).
        basal_metabolism_kj: u32,
        /// impedance, Ω ×10.
        impedance_x10: u32,
        /// weight, g.
        weight_g: u32,
        /// height, mm (lb scales send 0.1 in).
        height_mm: u32,
        /// unit on the wire.
        unit: WeightUnit,
        /// user id.
        user: u8,
        /// time stamp.
        time: DateTime,
    },
    /// 0x2A19 battery level.
    Battery {
        /// percent.
        percent: u8,
    },
}

impl Measurement {
    /// The user (a shared device's slot) a measurement names, if its kind
    /// names one.
    pub fn user(&self) -> Option<u8> {
        match self {
            Measurement::BloodPressure { user, .. }
            | Measurement::Weight { user, .. }
            | Measurement::BodyComposition { user, .. } => Some(*user),
            _ => None,
        }
    }

    /// The same measurement stamped `secs` later (as a clock that far
    /// ahead of the true time stamps it).
    pub fn shifted(&self, secs: i64) -> Measurement {
        let mut m = self.clone();
        match &mut m {
            Measurement::BloodPressure { time, .. }
            | Measurement::SpO2Spot { time, .. }
            | Measurement::Temperature { time, .. }
            | Measurement::Glucose { time, .. }
            | Measurement::Weight { time, .. }
            | Measurement::BodyComposition { time, .. } => {
                *time = DateTime::from_unix(time.to_unix() + secs);
            }
            Measurement::HeartRate { .. }
            | Measurement::CuffPressure { .. }
            | Measurement::SpO2Continuous { .. }
            | Measurement::Battery { .. } => {}
        }
        m
    }

    /// The characteristic (16-bit UUID) that carries this measurement.
    pub fn characteristic(&self) -> u16 {
        match self {
            Measurement::HeartRate { .. } => 0x2A37,
            Measurement::BloodPressure { .. } => 0x2A35,
            Measurement::CuffPressure { .. } => 0x2A36,
            Measurement::SpO2Continuous { .. } => 0x2A5F,
            Measurement::SpO2Spot { .. } => 0x2A5E,
            Measurement::Temperature { .. } => 0x2A1C,
            Measurement::Glucose { .. } => 0x2A18,
            Measurement::Weight { .. } => 0x2A9D,
            Measurement::BodyComposition { .. } => 0x2A9C,
            Measurement::Battery { .. } => 0x2A19,
        }
    }

    /// The temperature as sent, ×100 in the wire unit.
    pub fn wire_temperature_x100(&self) -> Option<i32> {
        match self {
            Measurement::Temperature {
                celsius_x100, unit, ..
            } => Some(match unit {
                TempUnit::Celsius => *celsius_x100,
                TempUnit::Fahrenheit => {
                    ((*celsius_x100 as f64) * 9.0 / 5.0 + 3200.0).round() as i32
                }
            }),
            _ => None,
        }
    }

    /// The weight as sent, in wire resolution units (5 g or 0.01 lb).
    pub fn wire_weight(&self) -> Option<u16> {
        match self {
            Measurement::Weight { grams, unit, .. } => Some(match unit {
                WeightUnit::Kilogram => (grams / 5).min(u16::MAX as u32) as u16,
                WeightUnit::Pound => ((*grams as f64) / 453.592_37 * 100.0)
                    .round()
                    .min(u16::MAX as f64) as u16,
            }),
            _ => None,
        }
    }

    /// The DESIGN §3 fixed-point slots of this measurement (what the gateway
    /// should prove), or empty for non-clinical values (battery, cuff pressure).
    pub fn slots(&self) -> Vec<u64> {
        match self {
            Measurement::HeartRate { bpm, .. } => vec![u64::from(*bpm)],
            Measurement::BloodPressure {
                systolic_x10,
                diastolic_x10,
                map_x10,
                pulse,
                ..
            } => vec![
                u64::from(*systolic_x10),
                u64::from(*diastolic_x10),
                u64::from(*map_x10),
                u64::from(*pulse),
            ],
            Measurement::SpO2Continuous { spo2_x10, pulse }
            | Measurement::SpO2Spot {
                spo2_x10, pulse, ..
            } => vec![u64::from(*spo2_x10), u64::from(*pulse)],
            Measurement::Temperature { celsius_x100, .. } => vec![(*celsius_x100).max(0) as u64],
            Measurement::Glucose { mg_dl_x10, .. } => vec![u64::from(*mg_dl_x10)],
            Measurement::Weight { grams, .. } => vec![u64::from(*grams)],
            Measurement::BodyComposition {
                body_fat_x10,
                muscle_pct_x10,
                muscle_mass_g,
                body_water_mass_g,
                ..
            } => vec![
                u64::from(*body_fat_x10),
                u64::from(*muscle_pct_x10),
                u64::from(*muscle_mass_g),
                u64::from(*body_water_mass_g),
            ],
            Measurement::CuffPressure { .. } | Measurement::Battery { .. } => vec![],
        }
    }
}

/// A mean-reverting random walk (discrete Ornstein–Uhlenbeck).
#[derive(Clone, Debug)]
pub struct Walk {
    /// current value.
    pub x: f64,
    mean: f64,
    pull: f64,
    sd: f64,
    lo: f64,
    hi: f64,
}

impl Walk {
    /// A walk around `mean`, starting there.
    pub fn new(mean: f64, pull: f64, sd: f64, lo: f64, hi: f64) -> Walk {
        Walk {
            x: mean,
            mean,
            pull,
            sd,
            lo,
            hi,
        }
    }

    /// Advance one step.
    pub fn step(&mut self, rng: &mut ChaCha8Rng) -> f64 {
        let noise: f64 = (0..4).map(|_| rng.gen_range(-1.0..1.0)).sum::<f64>() * 0.866;
        self.x += self.pull * (self.mean - self.x) + self.sd * noise;
        self.x = self.x.clamp(self.lo, self.hi);
        self.x
    }
}

/// The seeded physiology of one simulated patient behind one device.
#[derive(Debug)]
pub struct Physiology {
    /// The device's own generator (seed, device index).
    pub rng: ChaCha8Rng,
    hr: Walk,
    sys: Walk,
    dia: Walk,
    spo2: Walk,
    temp: Walk,
    glucose: Walk,
    weight: Walk,
    /// The wire unit choices for this device.
    pub pressure_unit: PressureUnit,
    /// °C or °F.
    pub temp_unit: TempUnit,
    /// kg or lb.
    pub weight_unit: WeightUnit,
    /// user id on cuffs and scales.
    pub user: u8,
}

impl Physiology {
    /// A patient for device number `index` under `seed`.
    pub fn new(seed: u64, index: u64) -> Physiology {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let hr0 = rng.gen_range(58.0..85.0);
        let sys0 = rng.gen_range(108.0..145.0);
        let dia0 = rng.gen_range(65.0..92.0);
        let kg0 = rng.gen_range(50.0..110.0);
        let temp_unit = if rng.gen_bool(0.5) {
            TempUnit::Celsius
        } else {
            TempUnit::Fahrenheit
        };
        let weight_unit = if rng.gen_bool(0.5) {
            WeightUnit::Kilogram
        } else {
            WeightUnit::Pound
        };
        let user = rng.gen_range(1..5);
        let pressure_unit = if rng.gen_bool(0.25) {
            PressureUnit::KPa
        } else {
            PressureUnit::MmHg
        };
        Physiology {
            hr: Walk::new(hr0, 0.08, 1.5, 38.0, 190.0),
            sys: Walk::new(sys0, 0.3, 4.0, 85.0, 200.0),
            dia: Walk::new(dia0, 0.3, 3.0, 50.0, 120.0),
            spo2: Walk::new(97.5, 0.2, 0.4, 88.0, 100.0),
            temp: Walk::new(36.8, 0.2, 0.15, 35.5, 39.5),
            glucose: Walk::new(105.0, 0.2, 15.0, 60.0, 320.0),
            weight: Walk::new(kg0, 0.5, 0.2, 30.0, 250.0),
            pressure_unit,
            temp_unit,
            weight_unit,
            user,
            rng,
        }
    }

    /// Next heart-rate notification (1 s of beats).
    pub fn heart_rate(&mut self) -> Measurement {
        let bpm = self.hr.step(&mut self.rng).round() as u16;
        let beats = if self
            .rng
            .gen_bool((f64::from(bpm) / 60.0).fract().clamp(0.0, 1.0))
        {
            (bpm / 60 + 1) as usize
        } else {
            (bpm / 60).max(1) as usize
        };
        let rr_mean = 60.0 * 1024.0 / f64::from(bpm.max(1));
        let rr_1024 = (0..beats)
            .map(|_| (rr_mean + self.rng.gen_range(-25.0..25.0)).round() as u16)
            .collect();
        let contact = !self.rng.gen_bool(0.02);
        Measurement::HeartRate {
            bpm,
            rr_1024,
            contact,
        }
    }

    /// A full cuff measurement: (intermediate cuff pressures, final result).
    pub fn blood_pressure(&mut self) -> (Vec<Measurement>, Measurement) {
        let sys = self.sys.step(&mut self.rng).round() as u32;
        let dia = (self.dia.step(&mut self.rng).round() as u32).min(sys.saturating_sub(15));
        let map = dia * 10 + (sys - dia) * 10 / 3;
        let pulse = self.hr.step(&mut self.rng).round() as u16;
        let unit = self.pressure_unit;
        let peak = sys + 30;
        let mut icp = Vec::new();
        let mut p = 20;
        while p < peak {
            icp.push(Measurement::CuffPressure {
                pressure_x10: p * 10,
                unit,
            });
            p += 40;
        }
        let mut p = peak;
        while p > dia {
            icp.push(Measurement::CuffPressure {
                pressure_x10: p * 10,
                unit,
            });
            p = p.saturating_sub(25);
        }
        let result = Measurement::BloodPressure {
            systolic_x10: sys * 10,
            diastolic_x10: dia * 10,
            map_x10: map,
            pulse,
            user: self.user,
            unit,
            time: DateTime::now(),
        };
        (icp, result)
    }

    /// Next continuous oximetry sample.
    pub fn spo2_continuous(&mut self) -> Measurement {
        Measurement::SpO2Continuous {
            spo2_x10: (self.spo2.step(&mut self.rng) * 10.0).round() as u32,
            pulse: self.hr.step(&mut self.rng).round() as u16,
        }
    }

    /// A spot check.
    pub fn spo2_spot(&mut self) -> Measurement {
        Measurement::SpO2Spot {
            spo2_x10: (self.spo2.step(&mut self.rng) * 10.0).round() as u32,
            pulse: self.hr.step(&mut self.rng).round() as u16,
            time: DateTime::now(),
        }
    }

    /// A temperature reading.
    pub fn temperature(&mut self) -> Measurement {
        Measurement::Temperature {
            celsius_x100: (self.temp.step(&mut self.rng) * 100.0).round() as i32,
            unit: self.temp_unit,
            time: DateTime::now(),
        }
    }

    /// A glucose record (whole mg/dL, as meters report).
    pub fn glucose(&mut self, seq: u16, time: DateTime) -> Measurement {
        Measurement::Glucose {
            seq,
            mg_dl_x10: (self.glucose.step(&mut self.rng).round() as u32) * 10,
            time,
        }
    }

    /// A weighing (rounded to what the wire unit can carry exactly in kg: 5 g;
    /// lb scales keep grams and the wire rounds).
    pub fn weight(&mut self) -> Measurement {
        let kg = self.weight.step(&mut self.rng);
        let grams = ((kg * 200.0).round() as u32) * 5;
        Measurement::Weight {
            grams,
            unit: self.weight_unit,
            user: self.user,
            time: DateTime::now(),
        }
    }

    /// A body-composition measurement of this patient: weight from the same
    /// walk as the scale's, the rest from plausible fractions of it
    /// (fat-free = weight − fat; water 73 % and soft lean 94 % of fat-free;
    /// basal metabolism by Katch–McArdle, 370 + 21.6 kcal per kg fat-free).
    pub fn body_composition(&mut self) -> Measurement {
        let g5 = |g: f64| ((g / 5.0).round() as u32) * 5;
        let kg = self.weight.step(&mut self.rng);
        let weight_g = g5(kg * 1000.0);
        let fat: f64 = self.rng.gen_range(0.12..0.35);
        let muscle: f64 = self.rng.gen_range(0.30..0.45);
        let ffm = f64::from(weight_g) * (1.0 - fat);
        // Height stays with the patient: derived, not drawn (no change to
        // the draws of the other measurements).
        let height_mm = 1550 + (self.weight.mean * 7.0) as u32 % 400;
        Measurement::BodyComposition {
            body_fat_x10: (fat * 1000.0).round() as u32,
            muscle_pct_x10: (muscle * 1000.0).round() as u32,
            muscle_mass_g: g5(f64::from(weight_g) * muscle),
            fat_free_mass_g: g5(ffm),
            soft_lean_mass_g: g5(ffm * 0.94),
            body_water_mass_g: g5(ffm * 0.73),
            basal_metabolism_kj: ((370.0 + 21.6 * ffm / 1000.0) * 4.184).round() as u32,
            impedance_x10: self.rng.gen_range(4000..6000),
            weight_g,
            height_mm,
            unit: self.weight_unit,
            user: self.user,
            time: DateTime::now(),
        }
    }

    /// Replace the values of `m` by implausible ones (the out-of-range fault).
    pub fn out_of_range(mut m: Measurement) -> Measurement {
        match &mut m {
            Measurement::HeartRate { bpm, contact, .. } => {
                *bpm = 350;
                *contact = true;
            }
            Measurement::BloodPressure {
                systolic_x10,
                diastolic_x10,
                map_x10,
                ..
            } => {
                *systolic_x10 = 3500;
                *diastolic_x10 = 150;
                *map_x10 = 1330;
            }
            Measurement::SpO2Continuous { spo2_x10, .. }
            | Measurement::SpO2Spot { spo2_x10, .. } => *spo2_x10 = 400,
            Measurement::Temperature { celsius_x100, .. } => *celsius_x100 = 4850,
            Measurement::Glucose { mg_dl_x10, .. } => *mg_dl_x10 = 7000,
            Measurement::Weight { grams, .. } => *grams = 300,
            Measurement::BodyComposition { body_fat_x10, .. } => *body_fat_x10 = 950,
            Measurement::CuffPressure { .. } | Measurement::Battery { .. } => {}
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(
            DateTime::from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2026-11-23T17:42:00Z
        let t = DateTime::from_unix(1_795_455_720);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute),
            (2026, 11, 23, 17, 42)
        );
    }

    #[test]
    fn physiology_is_reproducible() {
        let mut a = Physiology::new(7, 3);
        let mut b = Physiology::new(7, 3);
        for _ in 0..50 {
            assert_eq!(a.heart_rate(), b.heart_rate());
        }
        let mut c = Physiology::new(8, 3);
        let xs: Vec<_> = (0..10).map(|_| a.heart_rate()).collect();
        let ys: Vec<_> = (0..10).map(|_| c.heart_rate()).collect();
        assert_ne!(xs, ys);
    }

    #[test]
    fn values_are_plausible() {
        let mut p = Physiology::new(1, 1);
        for _ in 0..500 {
            let Measurement::HeartRate { bpm, .. } = p.heart_rate() else {
                unreachable!()
            };
            assert!((20..=300).contains(&bpm));
            let (_, bp) = p.blood_pressure();
            let s = bp.slots();
            assert!((400..=3000).contains(&s[0]) && (200..=2000).contains(&s[1]));
            assert!(s[1] < s[0] && s[2] > s[1] && s[2] < s[0]);
        }
    }
}
