//! When a device lends its machine: the owner's training windows, "only
//! when idle", a CPU share and a daily byte budget. Decided here, without
//! I/O, from readings the agent's driver takes (the clock, the load
//! average, the bytes its connections moved), so each rule is tested
//! without a clock or a network.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const SECONDS_PER_DAY: u64 = 86_400;

/// A daily span of UTC time, `HH:MM-HH:MM`. The end is excluded; an end
/// before the start runs past midnight (`22:00-06:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    start: u16,
    end: u16,
}

/// A training window that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("training window `{text}`: {why}; write it as HH:MM-HH:MM in UTC, e.g. 22:00-06:00")]
pub struct BadWindow {
    text: String,
    why: &'static str,
}

fn minute_of_day(hhmm: &str) -> Option<u16> {
    let (h, m) = hhmm.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl FromStr for Window {
    type Err = BadWindow;

    fn from_str(text: &str) -> Result<Self, BadWindow> {
        let bad = |why| BadWindow {
            text: text.to_owned(),
            why,
        };
        let (a, b) = text.trim().split_once('-').ok_or(bad("no `-`"))?;
        let start = minute_of_day(a.trim()).ok_or(bad("the start is not a time of day"))?;
        let end = minute_of_day(b.trim()).ok_or(bad("the end is not a time of day"))?;
        if start == end {
            return Err(bad("it starts where it ends"));
        }
        Ok(Window { start, end })
    }
}

impl TryFrom<String> for Window {
    type Error = BadWindow;
    fn try_from(s: String) -> Result<Self, BadWindow> {
        s.parse()
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.to_string()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

impl Window {
    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// What the driver read just before deciding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Readings {
    /// Seconds since the Unix epoch.
    pub unix_secs: u64,
    /// The 1-minute load average divided by the number of cores, if the
    /// system reports one.
    pub load_per_core: Option<f64>,
    /// Bytes sent and received today (UTC), earlier sessions included.
    pub bytes_today: u64,
}

impl Readings {
    pub fn minute_of_day(&self) -> u16 {
        ((self.unix_secs % SECONDS_PER_DAY) / 60) as u16
    }
}

/// Why the device sits out now. Only [`Pause::ByteBudget`] ends a session:
/// the rest pass with time.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Pause {
    #[error(
        "it is {now} UTC, outside the training windows ({windows}); policy.schedule.windows in the agent's configuration sets them"
    )]
    OutsideWindows { now: String, windows: String },
    #[error(
        "the machine is busy (load {load:.2} per core, the policy trains below {limit:.2}); policy.schedule.idle_below_load sets the limit"
    )]
    Busy { load: f64, limit: f64 },
    #[error(
        "today's byte budget is spent: {used} bytes sent and received, policy.schedule.max_bytes_per_day allows {limit}; the count starts again at 00:00 UTC"
    )]
    ByteBudget { used: u64, limit: u64 },
}

/// The owner's schedule: part of the agent's policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Train only inside one of these (UTC); empty: at any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Train only while the 1-minute load average per core is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_below_load: Option<f64>,
    /// The share of wall time (0 < share ≤ 1) training may take: after
    /// training for t the agent rests t·(1/share − 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_share: Option<f64>,
    /// Bytes sent and received per UTC day, over every connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_day: Option<u64>,
}

/// A schedule that cannot be kept.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BadSchedule {
    #[error("policy.schedule.max_cpu_share is {0}; give a share above 0 and at most 1, e.g. 0.5")]
    CpuShare(f64),
    #[error("policy.schedule.idle_below_load is {0}; give a positive load per core, e.g. 0.5")]
    IdleLoad(f64),
}

impl Schedule {
    /// Refuses a schedule that can never let the device train.
    pub fn check(&self) -> Result<(), BadSchedule> {
        if let Some(s) = self.max_cpu_share
            && !(s > 0.0 && s <= 1.0)
        {
            return Err(BadSchedule::CpuShare(s));
        }
        if let Some(l) = self.idle_below_load
            && !(l > 0.0 && l.is_finite())
        {
            return Err(BadSchedule::IdleLoad(l));
        }
        Ok(())
    }

    /// Whether the device may keep its session: within the byte budget.
    pub fn within_budget(&self, bytes_today: u64) -> Result<(), Pause> {
        match self.max_bytes_per_day {
            Some(limit) if bytes_today >= limit => Err(Pause::ByteBudget {
                used: bytes_today,
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the device may train now. A load the system does not
    /// report counts as busy when the owner asked for idleness.
    pub fn may_train(&self, r: &Readings) -> Result<(), Pause> {
        self.within_budget(r.bytes_today)?;
        let now = r.minute_of_day();
        if !self.windows.is_empty() && !self.windows.iter().any(|w| w.contains(now)) {
            return Err(Pause::OutsideWindows {
                now: format!("{:02}:{:02}", now / 60, now % 60),
                windows: self
                    .windows
                    .iter()
                    .map(Window::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if let Some(limit) = self.idle_below_load {
            let load = r.load_per_core.unwrap_or(f64::INFINITY);
            if load >= limit {
                return Err(Pause::Busy { load, limit });
            }
        }
        Ok(())
    }

    /// How long to rest after training that took `took`, to keep to the
    /// CPU share.
    pub fn rest_after(&self, took: Duration) -> Duration {
        match self.max_cpu_share {
            Some(s) if s > 0.0 && s < 1.0 => took.mul_f64(1.0 / s - 1.0),
            _ => Duration::ZERO,
        }
    }
}

/// Bytes counted for one UTC day; a reading from a later day starts over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyBytes {
    /// Days since the Unix epoch (UTC).
    pub day: u64,
    pub bytes: u64,
}

impl DailyBytes {
    pub fn day_of(unix_secs: u64) -> u64 {
        unix_secs / SECONDS_PER_DAY
    }

    /// What was counted on the day of `unix_secs`: nothing if that is a
    /// later day than this count's.
    pub fn on(self, unix_secs: u64) -> DailyBytes {
        let day = Self::day_of(unix_secs);
        if day == self.day {
            self
        } else {
            DailyBytes { day, bytes: 0 }
        }
    }

    /// Seconds from `unix_secs` to the next 00:00 UTC.
    pub fn until_tomorrow(unix_secs: u64) -> u64 {
        SECONDS_PER_DAY - unix_secs % SECONDS_PER_DAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTES_PER_DAY: u16 = 24 * 60;

    fn at(h: u64, m: u64) -> Readings {
        Readings {
            unix_secs: 20_000 * SECONDS_PER_DAY + h * 3600 + m * 60 + 7,
            load_per_core: Some(0.1),
            bytes_today: 0,
        }
    }

    #[test]
    fn windows_parse_and_wrap_past_midnight() {
        let night: Window = "22:00-06:00".parse().unwrap();
        assert!(night.contains(22 * 60));
        assert!(night.contains(3 * 60));
        assert!(!night.contains(6 * 60), "the end is excluded");
        assert!(!night.contains(12 * 60));
        let day: Window = "09:30-17:00".parse().unwrap();
        assert!(day.contains(9 * 60 + 30) && !day.contains(9 * 60 + 29));
        assert_eq!(day.to_string(), "09:30-17:00");
        for bad in [
            "",
            "9:00-17:00",
            "09:00",
            "24:00-01:00",
            "09:60-10:00",
            "08:00-08:00",
        ] {
            let e = bad.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains("HH:MM-HH:MM"), "{bad}: {e}");
        }
    }

    #[test]
    fn outside_every_window_the_device_does_not_train() {
        let s = Schedule {
            windows: vec![
                "22:00-06:00".parse().unwrap(),
                "12:00-13:00".parse().unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(s.may_train(&at(23, 0)), Ok(()));
        assert_eq!(s.may_train(&at(12, 59)), Ok(()));
        let e = s.may_train(&at(14, 5)).unwrap_err();
        assert_eq!(
            e,
            Pause::OutsideWindows {
                now: "14:05".into(),
                windows: "22:00-06:00, 12:00-13:00".into()
            }
        );
        assert!(Schedule::default().may_train(&at(14, 5)).is_ok());
    }

    #[test]
    fn a_busy_machine_or_an_unknown_load_waits_when_idleness_is_asked() {
        let s = Schedule {
            idle_below_load: Some(0.5),
            ..Default::default()
        };
        let mut r = at(1, 0);
        assert!(s.may_train(&r).is_ok());
        r.load_per_core = Some(0.9);
        assert!(matches!(s.may_train(&r), Err(Pause::Busy { .. })));
        r.load_per_core = None;
        assert!(matches!(s.may_train(&r), Err(Pause::Busy { .. })));
    }

    #[test]
    fn the_byte_budget_stops_at_its_limit_and_resets_the_next_day() {
        let s = Schedule {
            max_bytes_per_day: Some(1000),
            ..Default::default()
        };
        assert!(s.within_budget(999).is_ok());
        assert_eq!(
            s.within_budget(1000),
            Err(Pause::ByteBudget {
                used: 1000,
                limit: 1000
            })
        );
        let today = at(23, 59).unix_secs;
        let count = DailyBytes {
            day: DailyBytes::day_of(today),
            bytes: 1500,
        };
        assert_eq!(count.on(today).bytes, 1500);
        assert_eq!(count.on(today + 61).bytes, 0, "after midnight");
        assert_eq!(DailyBytes::until_tomorrow(today), 53);
    }

    #[test]
    fn the_cpu_share_sets_the_rest_and_impossible_schedules_are_refused() {
        let half = Schedule {
            max_cpu_share: Some(0.25),
            ..Default::default()
        };
        assert_eq!(
            half.rest_after(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
        assert_eq!(
            Schedule::default().rest_after(Duration::from_secs(2)),
            Duration::ZERO
        );
        for share in [0.0, -1.0, 1.5, f64::NAN] {
            let s = Schedule {
                max_cpu_share: Some(share),
                ..Default::default()
            };
            assert!(
                matches!(s.check(), Err(BadSchedule::CpuShare(_))),
                "{share}"
            );
        }
        let s = Schedule {
            idle_below_load: Some(0.0),
            ..Default::default()
        };
        assert!(matches!(s.check(), Err(BadSchedule::IdleLoad(_))));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_windows_round_trip(text in "\\PC{0,16}", a in 0u16..1440, b in 0u16..1440) {
            let _ = text.parse::<Window>();
            prop_assume!(a != b);
            let w = Window { start: a, end: b };
            prop_assert_eq!(w.to_string().parse::<Window>(), Ok(w));
            // A window and its complement cover each minute exactly once.
            let rest = Window { start: b, end: a };
            for m in [a, b, (a + 1) % MINUTES_PER_DAY, (b + MINUTES_PER_DAY - 1) % MINUTES_PER_DAY] {
                prop_assert!(w.contains(m) != rest.contains(m));
            }
        }
    }
}
