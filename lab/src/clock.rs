//! Clock skew in the lab. Hosts share the machine's one kernel clock, so the lab moves
//! a host's clock inside its server processes: every server the lab starts (Redis,
//! Sentinel, PostgreSQL, the invalidator) has our shim `clockshift.so` preloaded
//! (`shim/clockshift.c`, compiled by `build.rs` and embedded here), which adds the
//! offset held in its host's clock file, `<lab dir>/<host>/clock`, to the wall clock
//! (`clock_gettime(CLOCK_REALTIME)`, `gettimeofday`, `time`). Monotonic clocks are not
//! moved, as on a real machine whose clock is set.
//!
//! The file holds one line: `OFFSET_MS` for a bump, `OFFSET_MS PERIOD_MS` for a strobe
//! (see [`Skew`]); no file means true time. It is replaced atomically, and the shim
//! reads it again at most every 10 ms.
//!
//! Why not libfaketime: Debian's 0.9.10 hangs `redis-server` at start-up (it finds the
//! real functions with `dlsym`, which allocates, while jemalloc initialises and asks
//! for the time). The shim never allocates: it calls the kernel's vDSO directly.

use crate::lab_dir;
use coherence_nemeses::clock::Skew;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shim, compiled for this machine.
pub const SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/clockshift.so"));

/// The environment variable that names a process's clock file.
pub const CLOCK_FILE_VAR: &str = "COHERENCE_CLOCK_FILE";

/// How long after its file changes every process on the host shows the new time: the
/// shim reads the file again at most every 10 ms; twice that to be sure.
pub const TAKES_EFFECT: Duration = Duration::from_millis(20);

/// Where `lab up` puts the shim.
pub fn shim_path() -> PathBuf {
    lab_dir().join("clockshift.so")
}

/// The clock file of the host named `host`.
pub fn clock_file(host: &str) -> PathBuf {
    lab_dir().join(host).join("clock")
}

/// Writes the shim into the lab directory, readable by every server's user.
pub fn install() -> std::io::Result<()> {
    write_atomically(&shim_path(), SHIM, 0o755)
}

/// `argv` run with the shim preloaded and the clock file of `host`, through `env`.
pub fn preloaded(host: &str, argv: &[&str]) -> Vec<String> {
    let mut out = vec![
        "env".to_string(),
        format!("LD_PRELOAD={}", shim_path().display()),
        format!("{CLOCK_FILE_VAR}={}", clock_file(host).display()),
    ];
    out.extend(argv.iter().map(|a| a.to_string()));
    out
}

/// The file's line for `skew`.
pub fn format(skew: &Skew) -> String {
    match skew.period_ms() {
        None => format!("{}\n", skew.offset_ms()),
        Some(period) => format!("{} {period}\n", skew.offset_ms()),
    }
}

/// The skew a clock file's text holds, read as the shim reads it: `None` (true time)
/// unless it is one or two integers within the shim's bounds, the offset not 0.
pub fn parse(text: &str) -> Option<Skew> {
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let first = lines.next()?;
    if lines.any(|l| !l.trim().is_empty()) {
        return None;
    }
    let words: Vec<&str> = first.split_whitespace().collect();
    let offset_ms: i64 = words.first()?.parse().ok()?;
    if offset_ms == 0 || offset_ms.abs() > i32::MAX as i64 {
        return None;
    }
    match words[1..] {
        [] => Some(Skew::Bump { offset_ms }),
        [period] => {
            let period_ms: u64 = period.parse().ok()?;
            match period_ms {
                0 => Some(Skew::Bump { offset_ms }),
                p if p <= u32::MAX as u64 => Some(Skew::Strobe {
                    offset_ms,
                    period_ms,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Moves the clock of the processes that read `file` by `skew` (or back with `None`);
/// in effect for all of them when this returns.
pub fn set(file: &Path, skew: Option<&Skew>) -> std::io::Result<()> {
    match skew {
        Some(s) => write_atomically(file, format(s).as_bytes(), 0o644)?,
        None => match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    std::thread::sleep(TAKES_EFFECT);
    Ok(())
}

/// The skew `file` holds now (`None`: true time).
pub fn get(file: &Path) -> std::io::Result<Option<Skew>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a temporary file beside `path` and renames it over `path`: a reader sees the
/// old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn the_file_format_round_trips_and_refuses_what_the_shim_ignores() {
        for skew in [
            Skew::Bump { offset_ms: 2500 },
            Skew::Bump { offset_ms: -40 },
            Skew::Strobe {
                offset_ms: -1200,
                period_ms: 300,
            },
        ] {
            assert_eq!(parse(&format(&skew)), Some(skew), "{skew}");
        }
        assert_eq!(parse("  700\n\n"), Some(Skew::Bump { offset_ms: 700 }));
        assert_eq!(parse("700 0"), Some(Skew::Bump { offset_ms: 700 }));
        for ignored in [
            "",
            "\n",
            "0",
            "0 300",
            "1.5",
            "12ms",
            "1 2 3",
            "1\n2",
            "-",
            "99999999999",
            "5 -3",
        ] {
            assert_eq!(parse(ignored), None, "{ignored:?}");
        }
    }

    fn unix_ns() -> i128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128
    }

    /// What `date` says the time is, with the shim preloaded and the clock file `file`;
    /// with the true time just before and just after it ran.
    fn shimmed_date(shim: &Path, file: &Path) -> (i128, i128, i128) {
        let before = unix_ns();
        let out = Command::new("date")
            .arg("+%s%N")
            .env("LD_PRELOAD", shim)
            .env(CLOCK_FILE_VAR, file)
            .output()
            .unwrap();
        let after = unix_ns();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "the loader said: {stderr}");
        let shown = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        (before, shown, after)
    }

    #[test]
    fn the_shim_shifts_a_real_process_clock_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("clockshift.so");
        std::fs::write(&shim, SHIM).unwrap();
        let file = dir.path().join("clock");
        let ms = 1_000_000i128;

        // No file: true time.
        let (before, shown, after) = shimmed_date(&shim, &file);
        assert!(
            (before..=after).contains(&shown),
            "{before} {shown} {after}"
        );

        // A bump forward and one back, to the millisecond.
        for offset_ms in [4321i64, -2750] {
            set(&file, Some(&Skew::Bump { offset_ms })).unwrap();
            let (before, shown, after) = shimmed_date(&shim, &file);
            let off = offset_ms as i128 * ms;
            assert!(
                (before + off..=after + off).contains(&shown),
                "offset {offset_ms} ms: {before} {shown} {after}"
            );
        }

        // A strobe: each reading is shifted, or not, as the period's parity says.
        let skew = Skew::Strobe {
            offset_ms: 10_000,
            period_ms: 50,
        };
        set(&file, Some(&skew)).unwrap();
        let (mut shifted, mut straight) = (0, 0);
        for _ in 0..40 {
            let (before, shown, after) = shimmed_date(&shim, &file);
            let off = 10_000 * ms;
            if (before + off..=after + off).contains(&shown) {
                shifted += 1;
            } else {
                assert!(
                    (before..=after).contains(&shown),
                    "{before} {shown} {after}"
                );
                straight += 1;
            }
            // When the period did not change while `date` ran, it must match its parity.
            let (b, a) = ((before / ms) as i64, (after / ms) as i64);
            if b / 50 == a / 50 {
                let expected = skew.offset_at(b) != 0;
                assert_eq!(shown > after, expected, "at {b} ms");
            }
            std::thread::sleep(Duration::from_millis(7));
        }
        assert!(
            shifted > 0 && straight > 0,
            "{shifted} shifted, {straight} not"
        );

        // Removed: true time again. Garbage: true time.
        set(&file, None).unwrap();
        assert_eq!(get(&file).unwrap(), None);
        let (before, shown, after) = shimmed_date(&shim, &file);
        assert!((before..=after).contains(&shown));
        std::fs::write(&file, "soon").unwrap();
        let (before, shown, after) = shimmed_date(&shim, &file);
        assert!((before..=after).contains(&shown));
    }

    /// Prints this process's clocks, one per line: monotonic, realtime, realtime
    /// coarse (ns), `gettimeofday` (µs), `time` (s), `timespec_get` (ns). Run in a
    /// child process with the shim preloaded by the test below. Not a test of its own:
    /// `scripts/test`, which runs the ignored tests as root, skips it by this name.
    #[test]
    #[ignore = "a helper: the shim test runs it in a child process"]
    fn print_clocks() {
        let ns = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: ts is a valid timespec to write.
            assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval to write; the time zone may be null.
        assert_eq!(
            unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) },
            0
        );
        // SAFETY: time accepts a null pointer.
        let t = unsafe { libc::time(std::ptr::null_mut()) };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        extern "C" {
            fn timespec_get(ts: *mut libc::timespec, base: libc::c_int) -> libc::c_int;
        }
        // SAFETY: ts is a valid timespec to write; 1 is TIME_UTC.
        assert_eq!(unsafe { timespec_get(&mut ts, 1) }, 1);
        println!("clocks");
        println!("{}", ns(libc::CLOCK_MONOTONIC));
        println!("{}", ns(libc::CLOCK_REALTIME));
        println!("{}", ns(libc::CLOCK_REALTIME_COARSE));
        println!("{}", tv.tv_sec as i128 * 1_000_000 + tv.tv_usec as i128);
        println!("{t}");
        println!("{}", ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128);
    }

    fn monotonic_ns() -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to write.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    }

    #[test]
    fn the_shim_moves_every_wall_clock_call_and_leaves_monotonic_time_alone() {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("clockshift.so");
        std::fs::write(&shim, SHIM).unwrap();
        let file = dir.path().join("clock");
        let offset_ms = -86_400_000i128; // a day back
        set(
            &file,
            Some(&Skew::Bump {
                offset_ms: offset_ms as i64,
            }),
        )
        .unwrap();
        let (mono_before, before) = (monotonic_ns(), unix_ns());
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "clock::tests::print_clocks",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1", "-q"])
            .env("LD_PRELOAD", &shim)
            .env(CLOCK_FILE_VAR, &file)
            .output()
            .unwrap();
        let (mono_after, after) = (monotonic_ns(), unix_ns());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<i128> = text
            .lines()
            .skip_while(|l| *l != "clocks")
            .skip(1)
            .take(6)
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 6, "{text}");
        let off = offset_ms * 1_000_000;
        let within = |x: i128, slack: i128| (before + off - slack..=after + off).contains(&x);
        assert!(
            (mono_before..=mono_after).contains(&v[0]),
            "monotonic: {text}"
        );
        assert!(within(v[1], 0), "realtime: {text}");
        assert!(within(v[2], 10_000_000), "realtime coarse: {text}");
        assert!(within(v[3] * 1000, 1000), "gettimeofday: {text}");
        assert!(within(v[4] * 1_000_000_000, 1_000_000_000), "time: {text}");
        assert!(within(v[5], 0), "timespec_get: {text}");
    }
}
