//! The status table: rows of every slot, sizes and durations in words,
//! columns aligned and cut to the terminal.

use super::*;

pub(super) fn human_bytes(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

pub(super) fn human_duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let clock = format!("{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 {
        format!("{days}d {clock}")
    } else {
        clock
    }
}

pub(super) fn last_exit(state: &ProcessState) -> String {
    match (&state.last_exit, state.last_exit_status) {
        (Some(exit), _) => exit.to_string(),
        (None, Some(status)) => status.to_string(),
        (None, None) => "-".into(),
    }
}

/// A process's CPU and memory, as the host measured them or, for a
/// document without them (php-lrpm's), as lrpmctl reads them itself.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Usage {
    pub(super) cpu_percent: Option<f64>,
    pub(super) cpu_seconds: Option<f64>,
    pub(super) rss_bytes: Option<u64>,
    /// How old the reading was when the document was received.
    pub(super) age: Duration,
}

impl Usage {
    /// From the document when it has the keys (null: the host has no
    /// figure). Only for a document without them (php-lrpm's, an older
    /// lrpm-host's) does lrpmctl read /proc itself: a pid in the document
    /// names a process in the host's PID namespace, which may not be ours.
    pub(super) fn of(slot: Option<&SlotStatus>, pid: Option<i64>) -> Usage {
        match slot {
            Some(s) if s.cpu_percent.is_some() || s.rss_bytes.is_some() => Usage {
                cpu_percent: s.cpu_percent.flatten(),
                cpu_seconds: s.cpu_seconds.flatten(),
                rss_bytes: s.rss_bytes.flatten(),
                age: Duration::from_millis(s.usage_age_ms.unwrap_or(0)),
            },
            _ => Usage::read_locally(pid),
        }
    }

    pub(super) fn read_locally(pid: Option<i64>) -> Usage {
        let reading = pid.and_then(|p| i32::try_from(p).ok()).and_then(|p| UsageReader::new().read(p));
        match reading {
            Some(u) => Usage {
                cpu_percent: Some(u.cpu_percent()),
                cpu_seconds: Some(u.cpu_time.as_secs_f64()),
                rss_bytes: Some(u.rss_bytes),
                age: Duration::ZERO,
            },
            None => Usage::default(),
        }
    }
}

/// One row of the table: a job, or one slot of a job with replicas.
pub(super) struct Row {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) pid: Option<i64>,
    pub(super) status: Option<StatusName>,
    pub(super) started_at: Option<i64>,
    pub(super) restart_at: Option<i64>,
    pub(super) restarts: Option<u64>,
    pub(super) last_exit: String,
    pub(super) cycles: Option<u64>,
    pub(super) usage: Usage,
    /// `--cluster`: the member that runs the unit.
    pub(super) owner: Option<String>,
    /// Its running tasks' pids (`Lrpm\Task`), listed under it.
    pub(super) tasks: Vec<i32>,
}

pub(super) fn rows_of(id: &str, entry: &JobStatus<Value>) -> Vec<Row> {
    let state = &entry.state;
    let name = entry.config.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    let single = state.slots.len() <= 1 && state.replicas.unwrap_or(1) <= 1;
    if single {
        let slot = state.slots.first();
        return vec![Row {
            id: id.to_string(),
            name,
            pid: state.pid,
            status: state.status,
            started_at: state.started_at,
            restart_at: state.restart_at,
            restarts: state.restarts,
            last_exit: last_exit(state),
            cycles: slot.and_then(|s| s.cycles),
            usage: Usage::of(slot, state.pid),
            owner: slot.and_then(|s| s.owner.clone()),
            tasks: slot.and_then(|s| s.tasks.as_ref()).map(|t| t.pids.clone()).unwrap_or_default(),
        }];
    }
    state
        .slots
        .iter()
        .map(|slot| Row {
            id: format!("{id}#{}", slot.slot),
            name: name.clone(),
            pid: slot.pid,
            status: slot.status,
            started_at: slot.started_at,
            restart_at: slot.restart_at,
            restarts: slot.restarts,
            last_exit: slot.last_exit.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
            cycles: slot.cycles,
            usage: Usage::of(Some(slot), slot.pid),
            owner: slot.owner.clone(),
            tasks: slot.tasks.as_ref().map(|t| t.pids.clone()).unwrap_or_default(),
        })
        .collect()
}

pub(super) fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Where the table must fit (a terminal), if anywhere.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fit {
    pub(super) columns: usize,
    pub(super) lines: usize,
}

/// The table's lines, each with the colour of its row (None: the header).
pub(super) fn table_lines(rows: Vec<Row>) -> Vec<(String, &'static str)> {
    let now = unix_seconds();
    let header =
        ["ID", "NAME", "STATE", "PID", "%CPU", "RSS", "UPTIME", "CYCLES", "RESTARTS", "LAST EXIT", "NEXT START"];
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut colours = Vec::new();
    let dash = || "-".to_string();
    for row in rows {
        // php-lrpm's documents have no status: derive the basic one.
        let status = match row.status {
            Some(name) => name.as_str().to_string(),
            None if row.pid.is_some() => "running".to_string(),
            None => "exited".to_string(),
        };
        let uptime = match (row.pid, row.started_at) {
            (Some(_), Some(started)) => human_duration(now - started),
            _ => dash(),
        };
        let next_start = match (status.as_str(), row.restart_at) {
            ("backoff", Some(at)) => format!("in {}", human_duration(at - now)),
            _ => dash(),
        };
        colours.push(match status.as_str() {
            "running" => "32",
            "backoff" | "stopping" => "33",
            "exited" | "failed" => "31",
            _ => "2",
        });
        // A unit another member runs: which one.
        let status = match (&row.owner, status.as_str()) {
            (Some(owner), "elsewhere") => format!("on {owner}"),
            _ => status,
        };
        // Ids, names and exits come from the configuration: never raw to the terminal.
        let row_cells = vec![
            row.id,
            row.name,
            status,
            row.pid.map_or_else(dash, |p| p.to_string()),
            row.usage.cpu_percent.map_or_else(dash, |c| format!("{c:.1}")),
            row.usage.rss_bytes.map_or_else(dash, human_bytes),
            uptime,
            row.cycles.map_or_else(dash, |c| c.to_string()),
            row.restarts.map_or_else(dash, |r| r.to_string()),
            row.last_exit,
            next_start,
        ];
        cells.push(row_cells.iter().map(|cell| escape::controls(cell).into_owned()).collect());
        // Its tasks, one line each under it.
        for pid in &row.tasks {
            let mut task = vec![String::new(); header.len()];
            task[0] = "  └ task".to_string();
            task[2] = "running".to_string();
            task[3] = pid.to_string();
            cells.push(task);
            colours.push("2");
        }
    }
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(cells);
    aligned(&rows).into_iter().zip(std::iter::once("1").chain(colours)).collect()
}

/// Each row as one line: cells padded to their column's width, two spaces
/// apart, without trailing blanks.
pub(super) fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// The table as text: painted when `color`, cut to `fit` when given.
pub(super) fn render_table(rows: Vec<Row>, color: bool, fit: Option<Fit>) -> String {
    let mut lines = table_lines(rows);
    if let Some(fit) = fit {
        if lines.len() > fit.lines.max(2) {
            let hidden = lines.len() - (fit.lines.max(2) - 1);
            lines.truncate(fit.lines.max(2) - 1);
            lines.push((format!("... {hidden} more rows"), "2"));
        }
        for (text, _) in &mut lines {
            if text.chars().count() > fit.columns {
                *text = text.chars().take(fit.columns).collect();
            }
        }
    }
    let mut out = String::new();
    for (text, code) in lines {
        if color {
            out.push_str(&format!("\x1b[{code}m{text}\x1b[0m\n"));
        } else {
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

/// "2026-01-31 23:59:59 UTC" (the supervisor logs in UTC too).
pub(super) fn utc_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_formats_dates_around_leap_days_and_epochs() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_709_251_199), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc_time(4_102_444_800), "2100-01-01 00:00:00 UTC");
    }

    #[test]
    fn a_table_cut_to_a_terminal_says_how_many_rows_it_hides() {
        let row = |id: &str| Row {
            id: id.to_string(),
            name: "a long job name".to_string(),
            pid: Some(7),
            status: None,
            started_at: None,
            restart_at: None,
            restarts: None,
            last_exit: "-".into(),
            cycles: None,
            usage: Usage::default(),
            owner: None,
            tasks: Vec::new(),
        };
        let rows = (0..10).map(|i| row(&i.to_string())).collect();
        let text = render_table(rows, false, Some(Fit { columns: 20, lines: 4 }));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{text}");
        assert_eq!(lines[3], "... 8 more rows");

        // A worker's running tasks: a line each, under it.
        let mut with_tasks = row("w");
        with_tasks.tasks = vec![41, 42];
        let text = render_table(vec![with_tasks, row("x")], false, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "the header, the worker, its two tasks, the next row: {text}");
        for (line, pid) in lines[2..4].iter().zip(["41", "42"]) {
            assert!(line.starts_with("  └ task") && line.contains("running") && line.ends_with(pid), "{text}");
        }
        assert!(lines[4].starts_with('x'), "{text}");
    }
}
