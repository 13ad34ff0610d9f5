//! Query strings and path parameters, parsed as outside input (issue 16).
//!
//! Anything in a URL may be malformed, on purpose or not: each parameter is
//! parsed here into a value PostgreSQL accepts, or into a 400 that names the
//! parameter — never a panic, and never before-or-after authentication
//! dependent (handlers parse first, then log in). The FHIR search has its own
//! parser (`fhir::SearchParams`); both are property-tested with arbitrary
//! strings.

use super::ApiError;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use chrono::{DateTime, Datelike, Utc};
use hailan_proto::DataType;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Open ends of a time range (inside PostgreSQL's timestamptz range): the
/// start when none is given, the Unix epoch.
pub const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;
/// The end when none is given: 9999-12-31T23:59:59Z, the last second of the
/// last year the time parameters accept.
pub const LATEST: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 0) {
    Some(t) => t,
    None => DateTime::UNIX_EPOCH,
};

/// `Query<T>` whose rejection is a JSON 400 like every other error.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// `Path<T>` whose rejection is a JSON 400 like every other error.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// A time parameter (RFC 3339, e.g. `2026-12-01T00:00:00Z`), years 0–9999.
pub fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    let t = v.trim().parse::<DateTime<Utc>>().map_err(|_| {
        ApiError::BadRequest(format!(
            "{name} {v:?}: expected an RFC 3339 time such as 2026-12-01T00:00:00Z"
        ))
    })?;
    if !(0..=9999).contains(&t.year()) {
        return Err(ApiError::BadRequest(format!(
            "{name} {v:?}: the year must be 0 to 9999"
        )));
    }
    Ok(t)
}

/// An optional time parameter.
fn parse_opt_time(name: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|v| parse_time(name, v)).transpose()
}

/// A page cursor, `{micros}_{id}` as `next_cursor` writes it.
pub fn parse_cursor(c: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::BadRequest("cursor: malformed (pass next_cursor back as it is)".into());
    let (micros, id) = c.split_once('_').ok_or_else(bad)?;
    let t = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or_else(bad)?;
    Ok((t, id.parse().map_err(|_| bad())?))
}

/// Every data type's name.
pub fn all_type_names() -> Vec<String> {
    DataType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect()
}

/// Data type names from a comma-separated `type` parameter (all known when empty).
pub fn parse_types(param: Option<&str>) -> Result<Vec<String>, ApiError> {
    match param.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(all_type_names()),
        Some(s) => s
            .split(',')
            .map(|t| {
                DataType::from_name(t.trim())
                    .map(|d| d.as_str().to_owned())
                    .ok_or_else(|| ApiError::BadRequest(format!("type: unknown data type {t:?}")))
            })
            .collect(),
    }
}

/// Bucket length in milliseconds.
pub fn bucket_ms(name: &str) -> Option<i64> {
    match name {
        "minute" => Some(60_000),
        "hour" => Some(3_600_000),
        "day" => Some(86_400_000),
        _ => None,
    }
}

/// `/observations`' query string, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct ObservationQuery {
    /// `type`: comma-separated data type names; empty or absent: all.
    #[serde(rename = "type")]
    pub data_type: Option<String>,
    /// `from`: RFC 3339 time, inclusive; absent: [`EARLIEST`].
    pub from: Option<String>,
    /// `to`: RFC 3339 time, inclusive; absent: [`LATEST`].
    pub to: Option<String>,
    /// `limit`: page size, a whole number (clamped to 1..=`max_page`); absent: 500.
    pub limit: Option<String>,
    /// `cursor`: the `next_cursor` of the previous page, as it was given.
    pub cursor: Option<String>,
    /// `asc` (oldest first, the default) or `desc` (newest first).
    pub order: Option<String>,
}

/// `/observations`' parameters, parsed.
#[derive(Debug)]
pub struct ObservationParams {
    /// Data type names to read.
    pub types: Vec<String>,
    /// Earliest `recorded_at` (inclusive).
    pub from: DateTime<Utc>,
    /// Latest `recorded_at` (inclusive).
    pub to: DateTime<Utc>,
    /// Page size, 1 to `max_page` (500 unless asked).
    pub limit: i64,
    /// Keyset position (`recorded_at`, reading id) the page continues after (or
    /// before, newest first); `None`: the first page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// `order=desc`: newest first, the cursor pages backwards.
    pub newest_first: bool,
}

impl ObservationParams {
    /// Parse `q`; page size clamped to 1..=`max_page`. A malformed parameter is
    /// a 400 naming it.
    pub fn parse(q: &ObservationQuery, max_page: i64) -> Result<Self, ApiError> {
        let limit = match q.limit.as_deref() {
            None => 500,
            Some(l) => l.trim().parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!("limit {l:?}: expected a whole number"))
            })?,
        };
        Ok(ObservationParams {
            types: parse_types(q.data_type.as_deref())?,
            from: parse_opt_time("from", q.from.as_deref())?.unwrap_or(EARLIEST),
            to: parse_opt_time("to", q.to.as_deref())?.unwrap_or(LATEST),
            limit: limit.clamp(1, max_page.max(1)),
            after: q.cursor.as_deref().map(parse_cursor).transpose()?,
            newest_first: match q.order.as_deref().map(str::trim) {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(o) => {
                    return Err(ApiError::BadRequest(format!(
                        "order {o:?}: expected asc or desc"
                    )));
                }
            },
        })
    }
}

/// `/series`' query string, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct SeriesQuery {
    /// `type`: one data type name; required.
    #[serde(rename = "type")]
    pub data_type: String,
    /// `from`: RFC 3339 time; required.
    pub from: String,
    /// `to`: RFC 3339 time; required.
    pub to: String,
    /// `bucket`: `minute` (the default), `hour` or `day`.
    pub bucket: Option<String>,
}

/// `/series`' parameters, parsed.
#[derive(Debug)]
pub struct SeriesParams {
    /// The data type charted.
    pub data_type: DataType,
    /// Start of the range (inclusive).
    pub from: DateTime<Utc>,
    /// End of the range (inclusive); less than 7, 92 or 366 days after `from`
    /// for minute, hour and day buckets.
    pub to: DateTime<Utc>,
    /// `minute`, `hour` or `day`.
    pub bucket: &'static str,
    /// Bucket length in milliseconds.
    pub step: i64,
}

impl SeriesParams {
    /// Parse, and bound the number of buckets a chart asks for (its rows
    /// are bounded apart, by `api.max_rows_per_request`).
    pub fn parse(q: &SeriesQuery) -> Result<Self, ApiError> {
        let data_type = DataType::from_name(&q.data_type).ok_or_else(|| {
            ApiError::BadRequest(format!("type: unknown data type {:?}", q.data_type))
        })?;
        let (bucket, max_days) = match q.bucket.as_deref().unwrap_or("minute") {
            "minute" => ("minute", 7),
            "hour" => ("hour", 92),
            "day" => ("day", 366),
            _ => return Err(ApiError::BadRequest("bucket: minute, hour or day".into())),
        };
        let step = bucket_ms(bucket)
            .ok_or_else(|| ApiError::Internal(format!("no length for bucket {bucket}")))?;
        let from = parse_time("from", &q.from)?;
        let to = parse_time("to", &q.to)?;
        if to < from || (to - from).num_days() >= max_days {
            return Err(ApiError::BadRequest(format!(
                "from must precede to, less than {max_days} days apart for {bucket} buckets"
            )));
        }
        Ok(SeriesParams {
            data_type,
            from,
            to,
            bucket,
            step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What parsing may answer: a value, or a 400.
    fn ok_or_bad_request<T>(r: Result<T, ApiError>) -> Result<(), TestCaseError> {
        match r {
            Ok(_) | Err(ApiError::BadRequest(_)) => Ok(()),
            Err(e) => Err(TestCaseError::fail(format!("not a 400: {e:?}"))),
        }
    }

    /// Strings near the parsers' formats as well as any at all.
    fn input() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[-+0-9:TZ._ ]{0,40}",
            "[0-9]{1,7}-[0-9]{1,3}-[0-9]{1,3}T[0-9:]{1,12}(Z|[+-][0-9:]{1,6})?",
            "-?[0-9]{1,20}_[0-9a-f-]{0,40}",
            "[A-Z_,]{0,40}",
        ]
    }

    proptest! {
        #[test]
        fn observation_parameters_never_panic(
            data_type in proptest::option::of(input()),
            from in proptest::option::of(input()),
            to in proptest::option::of(input()),
            limit in proptest::option::of(input()),
            cursor in proptest::option::of(input()),
            order in proptest::option::of(input()),
            max_page in any::<i64>(),
        ) {
            let q = ObservationQuery { data_type, from, to, limit, cursor, order };
            let r = ObservationParams::parse(&q, max_page);
            if let Ok(p) = &r {
                prop_assert!(p.limit >= 1);
            }
            ok_or_bad_request(r)?;
        }

        #[test]
        fn series_parameters_never_panic(
            data_type in input(),
            from in input(),
            to in input(),
            bucket in proptest::option::of(input()),
        ) {
            ok_or_bad_request(SeriesParams::parse(&SeriesQuery { data_type, from, to, bucket }))?;
        }

        #[test]
        fn times_and_cursors_are_in_postgresql_range(v in input()) {
            for r in [parse_time("from", &v), parse_cursor(&v).map(|(t, _)| t)] {
                if let Ok(t) = &r {
                    prop_assert!((0..=9999).contains(&t.year()));
                }
                ok_or_bad_request(r)?;
            }
        }
    }

    #[test]
    fn a_bad_parameter_is_named() {
        let q = ObservationQuery {
            from: Some("yesterday".into()),
            ..Default::default()
        };
        let e = ObservationParams::parse(&q, 10).expect_err("bad from");
        assert!(e.to_string().starts_with("from \"yesterday\""), "{e}");
        let q = ObservationQuery {
            limit: Some("many".into()),
            ..Default::default()
        };
        let e = ObservationParams::parse(&q, 10).expect_err("bad limit");
        assert!(e.to_string().starts_with("limit"), "{e}");
        let q = ObservationQuery {
            limit: Some("100000".into()),
            ..Default::default()
        };
        assert_eq!(
            ObservationParams::parse(&q, 10).map(|p| p.limit).ok(),
            Some(10)
        );
        let q = SeriesQuery {
            data_type: "HEART_RATE".into(),
            from: "2026-12-01T00:00:00Z".into(),
            to: "2026-12-0".into(),
            bucket: None,
        };
        let e = SeriesParams::parse(&q).expect_err("bad to");
        assert!(e.to_string().starts_with("to "), "{e}");
        assert!(parse_cursor("999999999999999999_00000000-0000-0000-0000-000000000000").is_err());
    }
}
