//! Calendar dates from day counts, for the timestamps Portico prints itself (log lines, proto3 JSON): both need
//! `YYYY-MM-DDTHH:MM:SS` for a count of seconds since the Unix epoch, and a calendar library for one function is
//! not worth its weight.

/// The proleptic Gregorian `(year, month, day)` of a day count since 1970-01-01, negative before it
/// (Howard Hinnant's `civil_from_days`).
pub fn from_days(days: i64) -> (i64, i64, i64) {
    // Shift the epoch to 0000-03-01, so that each 400-year era's leap days fall at the end of its years.
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    (era * 400 + year_of_era + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DDTHH:MM:SS` (RFC 3339 without fraction or offset) for `seconds` since the Unix epoch, written
/// digit by digit into one array and appended at once; years outside 0..=9999 are the caller's to refuse (they
/// are written with all their digits).
pub fn write_date_time(out: &mut Vec<u8>, seconds: i64) {
    use crate::digits::pair;
    let (year, month, day) = from_days(seconds.div_euclid(86_400));
    let time_of_day = seconds.rem_euclid(86_400);
    let number = |value: i64| u64::try_from(value).unwrap_or_default();
    let mut text = *b"0000-00-00T00:00:00";
    text[5..7].copy_from_slice(&pair(number(month)));
    text[8..10].copy_from_slice(&pair(number(day)));
    text[11..13].copy_from_slice(&pair(number(time_of_day / 3600)));
    text[14..16].copy_from_slice(&pair(number(time_of_day / 60 % 60)));
    text[17..19].copy_from_slice(&pair(number(time_of_day % 60)));
    if (0..=9999).contains(&year) {
        text[0..2].copy_from_slice(&pair(number(year) / 100));
        text[2..4].copy_from_slice(&pair(number(year)));
        out.extend_from_slice(&text);
    } else {
        crate::digits::decimal(out, number(year), 4);
        out.extend_from_slice(&text[4..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_are_zero_padded() {
        let mut out = Vec::new();
        write_date_time(&mut out, 1_796_034_796);
        write_date_time(&mut out, -62_135_596_800);
        assert_eq!(String::from_utf8_lossy(&out), "2026-11-30T10:33:160001-01-01T00:00:00");
    }

    #[test]
    fn date_times_read_as_the_calendar_writes_them() {
        // Against chrono-free arithmetic: every field written as format! would, for a spread of instants.
        let mut seconds = -62_135_596_800i64; // 0001-01-01
        while seconds < 253_402_300_800 {
            let (year, month, day) = from_days(seconds.div_euclid(86_400));
            let time = seconds.rem_euclid(86_400);
            let expected =
                format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", time / 3600, time / 60 % 60, time % 60);
            let mut out = Vec::new();
            write_date_time(&mut out, seconds);
            assert_eq!(String::from_utf8_lossy(&out), expected, "{seconds}");
            seconds += 7_777_777 + seconds.rem_euclid(86_399);
        }
        let mut out = Vec::new();
        write_date_time(&mut out, 253_402_300_800); // 10000-01-01: all five digits, the rest unchanged
        assert_eq!(String::from_utf8_lossy(&out), "10000-01-01T00:00:00");
    }

    #[test]
    fn known_days() {
        assert_eq!(from_days(0), (1970, 1, 1));
        assert_eq!(from_days(-1), (1969, 12, 31));
        assert_eq!(from_days(11_016), (2000, 2, 29));
        assert_eq!(from_days(20_787), (2026, 11, 30));
        assert_eq!(from_days(2_932_896), (9999, 12, 31));
        assert_eq!(from_days(-719_162), (1, 1, 1));
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_one_before() {
        let (mut year, mut month, mut day) = (1801, 1, 1);
        for days in -61_726..(146_097 - 61_726) {
            assert_eq!(from_days(days), (year, month, day), "day {days}");
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let length = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month as usize - 1];
            day += 1;
            if day > length {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
    }
}
