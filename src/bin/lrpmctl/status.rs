//! `lrpmctl status`: the document asked for once, filtered here (so it
//! works against php-lrpm too) and shown as JSON or as the table.

use super::*;

/// The status document; php-lrpm encodes an empty or 0..n-keyed farm as a JSON list.
pub(super) fn parse_status(response: &str) -> Option<StatusDocument<Value>> {
    if let Ok(doc) = serde_json::from_str::<StatusDocument<Value>>(response) {
        return Some(doc);
    }
    let items: Vec<JobStatus<Value>> = serde_json::from_str(response).ok()?;
    Some(items.into_iter().enumerate().map(|(i, item)| (i.to_string(), item)).collect())
}

/// The document's jobs as raw JSON, in its order (php-lrpm's list form keyed 0..n).
pub(super) fn raw_jobs(response: &str) -> Option<IndexMap<String, Box<RawValue>>> {
    if let Ok(doc) = serde_json::from_str::<IndexMap<String, Box<RawValue>>>(response) {
        return Some(doc);
    }
    let items: Vec<Box<RawValue>> = serde_json::from_str(response).ok()?;
    Some(items.into_iter().enumerate().map(|(i, item)| (i.to_string(), item)).collect())
}

/// `ids` that are not among the document's, as a refusal naming them.
pub(super) fn unknown_ids<'a>(ids: &'a [String], known: impl Fn(&str) -> bool) -> Option<String> {
    let missing: Vec<&'a str> = ids.iter().map(String::as_str).filter(|id| !known(id)).collect();
    match missing.as_slice() {
        [] => None,
        [one] => Some(format!("job {one} does not exist")),
        many => Some(format!("jobs {} do not exist", many.join(", "))),
    }
}

/// What one `status` round gives, for a table or JSON.
pub(super) enum StatusView {
    Table(Vec<Row>),
    Json(String),
}

/// Asks for the document and keeps the jobs of `ids` (all when empty).
/// Filtering is done here, not by the host, so it works against php-lrpm
/// too. Err: the exit code and the message.
pub(super) fn fetch_status(
    path: &Path,
    ids: &[String],
    json: bool,
    signals: Option<&WatchSignals>,
) -> Result<StatusView, (Failure, Option<u8>)> {
    let response = match Reply::from_wire(&exchange(path, "status", signals).map_err(|f| (f, None))?) {
        Reply::Refused(why) => return Err((Failure::Invalid(why), Some(EXIT_REFUSED))),
        Reply::Done(response) => response,
    };
    let invalid = || {
        let start: String = response.chars().take(200).collect();
        (Failure::Invalid(format!("invalid status response from {}: {start}", path.display())), None)
    };
    if json {
        if ids.is_empty() {
            return Ok(StatusView::Json(response.trim_end().to_string()));
        }
        let jobs = raw_jobs(&response).ok_or_else(invalid)?;
        if let Some(refusal) = unknown_ids(ids, |id| jobs.contains_key(id)) {
            return Err((Failure::Invalid(refusal), Some(EXIT_REFUSED)));
        }
        let kept: IndexMap<&str, &RawValue> =
            jobs.iter().filter(|(id, _)| ids.contains(id)).map(|(id, job)| (id.as_str(), job.as_ref())).collect();
        return Ok(StatusView::Json(serde_json::to_string(&kept).unwrap_or_default()));
    }
    let doc = parse_status(&response).ok_or_else(invalid)?;
    if let Some(refusal) = unknown_ids(ids, |id| doc.contains_key(id)) {
        return Err((Failure::Invalid(refusal), Some(EXIT_REFUSED)));
    }
    let rows = doc.iter().filter(|(id, _)| ids.is_empty() || ids.contains(id)).flat_map(|(id, e)| rows_of(id, e));
    Ok(StatusView::Table(rows.collect()))
}

pub(super) fn use_color(color: Color) -> bool {
    match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal(),
    }
}

pub(super) fn status_once(path: &Path, args: &StatusArgs, json: bool, color: Color) -> ExitCode {
    match fetch_status(path, &args.ids, json, None) {
        Ok(StatusView::Json(text)) => println!("{text}"),
        Ok(StatusView::Table(rows)) => print!("{}", render_table(rows, use_color(color), None)),
        Err((failure, code)) => {
            eprintln!("lrpmctl: {}", failure.message());
            return ExitCode::from(code.unwrap_or(failure.exit_code()));
        }
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------
// --watch
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_are_named() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let known = |id: &str| id == "1";
        assert_eq!(unknown_ids(&ids(&["1"]), known), None);
        assert_eq!(unknown_ids(&ids(&["1", "9"]), known).as_deref(), Some("job 9 does not exist"));
        assert_eq!(unknown_ids(&ids(&["8", "9"]), known).as_deref(), Some("jobs 8, 9 do not exist"));
    }
}
