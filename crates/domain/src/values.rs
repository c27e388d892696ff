//! Validated values. Each has a constructor that refuses what the service must
//! never store; once built, a value is known good everywhere.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// A refused value: which field, and why. Shown to clients as the `detail`
/// of a 400 problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field as the client named it (camelCase).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// A refusal of `field` with a reason.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// Longest region name. Regions become group names (`dispatch/{region}`), so
/// they are short and use a safe alphabet.
pub const MAX_REGION_LEN: usize = 64;
/// Longest contractor name.
pub const MAX_NAME_LEN: usize = 200;
/// Longest job type.
pub const MAX_JOB_TYPE_LEN: usize = 64;
/// Longest job title.
pub const MAX_TITLE_LEN: usize = 200;
/// Longest address.
pub const MAX_ADDRESS_LEN: usize = 500;
/// Longest skill, and how many a contractor may list.
pub const MAX_SKILL_LEN: usize = 64;
/// How many skills a contractor may list.
pub const MAX_SKILLS: usize = 50;
/// Longest job: one week.
pub const MAX_DURATION_MINUTES: u32 = 7 * 24 * 60;

fn check_text(field: &'static str, value: &str, max: usize, allow_empty: bool) -> Result<String, ValidationError> {
    let trimmed = value.trim();
    if trimmed.is_empty() && !allow_empty {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > max {
        return Err(ValidationError::new(field, format!("must be at most {max} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and trims `value`.
            pub fn new(value: &str) -> Result<Self, ValidationError> {
                check_text($field, value, $max, false).map(Self)
            }
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_value!(
    /// A contractor's name: 1 to 200 characters, no control characters.
    PersonName, "name", MAX_NAME_LEN);
text_value!(
    /// A kind of job ("Flooring", "Tile"...): 1 to 64 characters.
    JobType, "jobType", MAX_JOB_TYPE_LEN);
text_value!(
    /// A job's title: 1 to 200 characters.
    Title, "title", MAX_TITLE_LEN);
text_value!(
    /// A job's address: 1 to 500 characters.
    Address, "address", MAX_ADDRESS_LEN);
text_value!(
    /// One skill of a contractor: 1 to 64 characters.
    Skill, "skills", MAX_SKILL_LEN);

/// A region ("north", "east-2"): 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
/// Regions name groups, so the alphabet keeps group names unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    /// Validates `value` (it is not trimmed: a region is an identifier).
    pub fn new(value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new("region", "must not be empty"));
        }
        if value.len() > MAX_REGION_LEN {
            return Err(ValidationError::new("region", format!("must be at most {MAX_REGION_LEN} characters")));
        }
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(ValidationError::new("region", "may contain only letters, digits, '.', '_' and '-'"));
        }
        Ok(Self(value.to_owned()))
    }
    /// The region's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Region {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}
impl From<Region> for String {
    fn from(value: Region) -> String {
        value.0
    }
}
impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How long a job takes: 1 minute to one week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct DurationMinutes(u32);

impl DurationMinutes {
    /// Validates `minutes`.
    pub fn new(minutes: i64) -> Result<Self, ValidationError> {
        if minutes <= 0 {
            return Err(ValidationError::new("durationMinutes", "must be greater than 0"));
        }
        if minutes > i64::from(MAX_DURATION_MINUTES) {
            return Err(ValidationError::new("durationMinutes", format!("must be at most {MAX_DURATION_MINUTES}")));
        }
        Ok(Self(minutes as u32))
    }
    /// The number of minutes.
    pub fn get(self) -> u32 {
        self.0
    }
}
impl TryFrom<i64> for DurationMinutes {
    type Error = ValidationError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}
impl From<DurationMinutes> for u32 {
    fn from(value: DurationMinutes) -> u32 {
        value.0
    }
}

/// Who made an assignment: a person, or the matching engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentSource {
    /// A dispatcher chose the contractor.
    #[default]
    Manual,
    /// The matching engine chose the contractor.
    Auto,
}

impl AssignmentSource {
    /// Parses `"manual"` or `"auto"`.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        match value {
            "manual" => Ok(Self::Manual),
            "auto" => Ok(Self::Auto),
            _ => Err(ValidationError::new("source", "must be \"manual\" or \"auto\"")),
        }
    }
    /// `"manual"` or `"auto"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Auto => "auto",
        }
    }
}

/// An instant in UTC, kept to the millisecond, written as RFC 3339 with `Z`
/// (`2025-11-08T15:00:00Z`, or `2025-11-08T14:59:58.123Z` when it has
/// milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time, truncated to the millisecond.
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }
    /// From milliseconds since the Unix epoch.
    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }
    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }
    /// From any `OffsetDateTime`, truncated to the millisecond.
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        Self((dt.unix_timestamp_nanos() / 1_000_000) as i64)
    }
    /// Parses RFC 3339 with any offset; the result is in UTC.
    pub fn parse_rfc3339(field: &'static str, value: &str) -> Result<Self, ValidationError> {
        OffsetDateTime::parse(value, &Rfc3339)
            .map(Self::from_datetime)
            .map_err(|_| ValidationError::new(field, "must be an RFC 3339 date-time, e.g. 2025-11-08T15:00:00Z"))
    }
    /// This instant plus `millis` milliseconds.
    pub const fn plus_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_add(millis))
    }
    /// The instant as an `OffsetDateTime` in UTC.
    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
    /// RFC 3339 in UTC with `Z`.
    pub fn to_rfc3339(self) -> String {
        let dt = self.to_datetime();
        let formatted = if dt.millisecond() == 0 {
            dt.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
        } else {
            dt.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"))
        };
        formatted.unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339("timestamp", &text).map_err(serde::de::Error::custom)
    }
}

/// A half-open interval `[start, end)` with `end` after `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    start: Timestamp,
    end: Timestamp,
}

impl TimeRange {
    /// Refuses an `end` that is not after `start`.
    pub fn new(start: Timestamp, end: Timestamp) -> Result<Self, ValidationError> {
        if end <= start {
            return Err(ValidationError::new("endUtc", "must be after startUtc"));
        }
        Ok(Self { start, end })
    }
    /// Inclusive start.
    pub fn start(&self) -> Timestamp {
        self.start
    }
    /// Exclusive end.
    pub fn end(&self) -> Timestamp {
        self.end
    }
    /// Whether the two intervals share any instant (touching ends do not).
    pub fn overlaps(&self, other: &TimeRange) -> bool {
        self.start < other.end && other.start < self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_accepts_identifiers_and_refuses_group_breaking_text() {
        assert!(Region::new("north").is_ok());
        assert!(Region::new("east-2.b_c").is_ok());
        assert!(Region::new("").is_err());
        assert!(Region::new("a/b").is_err());
        assert!(Region::new("north ").is_err());
        assert!(Region::new(&"x".repeat(65)).is_err());
    }

    #[test]
    fn names_are_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(PersonName::new("  Ana  ").unwrap().as_str(), "Ana");
        assert!(PersonName::new("   ").is_err());
        assert!(PersonName::new("a\u{0}b").is_err());
        assert!(PersonName::new(&"é".repeat(200)).is_ok());
        assert!(PersonName::new(&"é".repeat(201)).is_err());
    }

    #[test]
    fn duration_must_be_positive_and_at_most_a_week() {
        assert!(DurationMinutes::new(0).is_err());
        assert!(DurationMinutes::new(-5).is_err());
        assert_eq!(DurationMinutes::new(120).unwrap().get(), 120);
        assert!(DurationMinutes::new(i64::from(MAX_DURATION_MINUTES) + 1).is_err());
    }

    #[test]
    fn source_is_manual_or_auto() {
        assert_eq!(AssignmentSource::parse("auto").unwrap(), AssignmentSource::Auto);
        assert_eq!(AssignmentSource::parse("manual").unwrap(), AssignmentSource::Manual);
        assert_eq!(AssignmentSource::parse("Manual").unwrap_err().field, "source");
    }

    #[test]
    fn timestamps_round_trip_as_utc_with_z() {
        let t = Timestamp::parse_rfc3339("startUtc", "2025-11-08T16:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-11-08T15:00:00Z");
        let t = Timestamp::parse_rfc3339("x", "2025-11-08T14:59:58.123456Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-11-08T14:59:58.123Z");
        assert!(Timestamp::parse_rfc3339("x", "yesterday").is_err());
    }

    #[test]
    fn time_range_requires_end_after_start_and_detects_overlap() {
        let t = |s: &str| Timestamp::parse_rfc3339("t", s).unwrap();
        assert!(TimeRange::new(t("2025-01-01T10:00:00Z"), t("2025-01-01T10:00:00Z")).is_err());
        let a = TimeRange::new(t("2025-01-01T10:00:00Z"), t("2025-01-01T12:00:00Z")).unwrap();
        let b = TimeRange::new(t("2025-01-01T11:00:00Z"), t("2025-01-01T13:00:00Z")).unwrap();
        let c = TimeRange::new(t("2025-01-01T12:00:00Z"), t("2025-01-01T13:00:00Z")).unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c), "touching intervals do not overlap");
    }
}
