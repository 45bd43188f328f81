//! A provider's keys in rotation: a key that got 429 rests for the upstream's
//! `Retry-After` (seconds or an HTTP date; 1 s when absent, at most 300 s); a
//! static key that fails its own check after a 401 (`proxy::verify`) rests for
//! 30 s, doubling while the checks keep failing (up to 10 min), until it works
//! again (a `$(command)` key is fetched again instead). A 403 concerns the
//! resource, not the key.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::secret::Secret;

/// A 429 without `Retry-After` rests its key this long.
const DEFAULT_REST: Duration = Duration::from_secs(1);
/// Longest rest, whatever the upstream asks.
const MAX_REST: Duration = Duration::from_secs(300);
/// The first rest after a 401, and the longest after repeated ones.
const REFUSED_REST: Duration = Duration::from_secs(30);
const MAX_REFUSED_REST: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct ApiKey {
    pub secret: Secret,
    pub weight: f64,
    /// Resting until this many milliseconds after [`epoch`]; 0 when not resting.
    rest_until: AtomicU64,
    /// 401s in a row (static keys only): each doubles the rest.
    refusals: AtomicU32,
    /// A check of the key is under way.
    checking: AtomicBool,
}

/// The zero of the stored rest times.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// At least 1: 0 stands for "not resting".
fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX).max(1)
}

impl ApiKey {
    pub fn new(secret: Secret, weight: f64) -> ApiKey {
        ApiKey {
            secret,
            weight,
            rest_until: AtomicU64::new(0),
            refusals: AtomicU32::new(0),
            checking: AtomicBool::new(false),
        }
    }

    /// Whether the key may be used now.
    pub fn in_rotation(&self, now: Instant) -> bool {
        self.resting_until(now).is_none()
    }

    /// When a resting key is back.
    pub fn resting_until(&self, now: Instant) -> Option<Instant> {
        let until = match self.rest_until.load(Ordering::Relaxed) {
            0 => return None,
            ms => epoch() + Duration::from_millis(ms),
        };
        (until > now).then_some(until)
    }

    /// The upstream answered 429: rest for what its headers ask. Returns how long.
    pub fn rest(&self, headers: &HeaderMap) -> Duration {
        let wait = retry_after(headers).unwrap_or(DEFAULT_REST).min(MAX_REST);
        self.rest_for(wait);
        wait
    }

    fn rest_for(&self, wait: Duration) {
        // Never shorten a rest another request already started.
        self.rest_until.fetch_max(millis_since_epoch(Instant::now() + wait), Ordering::Relaxed);
    }

    /// The upstream answered 401 to the key. A static key rests (longer each
    /// time in a row; returns how long); a `$(command)` key forgets `used` so
    /// the next request fetches it again.
    pub fn refused(&self, used: &HeaderValue) -> Option<Duration> {
        match &self.secret {
            Secret::Literal(_) => {
                let row = self.refusals.fetch_add(1, Ordering::Relaxed).min(16);
                let wait = (REFUSED_REST * 2u32.saturating_pow(row)).min(MAX_REFUSED_REST);
                self.rest_for(wait);
                Some(wait)
            }
            Secret::Command(_) => {
                self.secret.rejected(used);
                None
            }
        }
    }

    /// Claims the check of this key; false when one is already under way.
    pub fn begin_check(&self) -> bool {
        !self.checking.swap(true, Ordering::AcqRel)
    }

    pub fn end_check(&self) {
        self.checking.store(false, Ordering::Release);
    }

    /// The key worked: a later 401 starts the backoff afresh.
    pub fn accepted(&self) {
        if self.refusals.load(Ordering::Relaxed) != 0 {
            self.refusals.store(0, Ordering::Relaxed);
        }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = http_date(text)?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7), the
/// only form a sender may produce.
fn http_date(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split([' ', ':']).collect();
    let [_, day, month, year, hour, minute, second, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    // Four digits, as the format says; also keeps the arithmetic below in range.
    if !(1970..=9999).contains(&year) {
        return None;
    }
    let (hour, minute, second): (u64, u64, u64) = (hour.parse().ok()?, minute.parse().ok()?, second.parse().ok()?);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(http::header::RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784111777))
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(http_date("Mon, 01 Jan 400000000000 00:00:00 GMT"), None, "no overflow");
        assert_eq!(retry_after(&headers("Thu, 01 Jan 1970 00:00:00 GMT")), Some(Duration::ZERO), "a past date");
        let future = httpdate_in(90);
        let wait = retry_after(&headers(&future)).unwrap().as_secs();
        assert!((88..=90).contains(&wait), "{future} -> {wait}");
    }

    /// An IMF-fixdate `seconds` from now, written by hand for the test.
    fn httpdate_in(seconds: u64) -> String {
        let at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + seconds;
        let (days, rest) = (at / 86_400, at % 86_400);
        let (year, month, day) = crate::telemetry::civil_from_days(days as i64);
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let m = MONTHS[(month - 1) as usize];
        format!("Mon, {day:02} {m} {year} {:02}:{:02}:{:02} GMT", rest / 3600, rest / 60 % 60, rest % 60)
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_rests_the_key_and_a_401_rests_a_static_key_with_backoff() {
        let key = ApiKey::new(Secret::Literal(HeaderValue::from_static("k")), 1.0);
        let now = Instant::now();
        assert!(key.in_rotation(now));
        assert_eq!(key.rest(&headers("2")), Duration::from_secs(2));
        assert!(!key.in_rotation(Instant::now()));
        assert_eq!(key.rest(&HeaderMap::new()), Duration::from_secs(1), "default rest");
        assert_eq!(key.rest(&headers("100000")), MAX_REST, "capped");
        key.rest_until.store(0, Ordering::Relaxed);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(key.in_rotation(Instant::now()));
        assert_eq!(key.refused(&HeaderValue::from_static("k")), Some(Duration::from_secs(30)));
        assert!(!key.in_rotation(Instant::now()));
        assert_eq!(key.refused(&HeaderValue::from_static("k")), Some(Duration::from_secs(60)), "doubles in a row");
        key.accepted();
        assert_eq!(key.refused(&HeaderValue::from_static("k")), Some(Duration::from_secs(30)), "a success resets it");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(key.in_rotation(Instant::now()), "a refused key comes back by itself");
    }
}
