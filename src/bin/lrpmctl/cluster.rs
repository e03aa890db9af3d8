//! `lrpmctl cluster`: the members, then every unit with its owner.

use super::*;

/// `lrpmctl cluster`: the members, then every unit with its owner.
pub(super) fn cluster(path: &Path, json: bool) -> ExitCode {
    let response = match ask(path, "cluster") {
        Ok(response) => response,
        Err(code) => return code,
    };
    let Ok(doc) = serde_json::from_str::<ClusterDocument>(&response) else {
        let start: String = response.chars().take(200).collect();
        eprintln!("lrpmctl: invalid cluster response from {}: {}", path.display(), escape::controls(&start));
        return ExitCode::from(EXIT_INVALID_RESPONSE);
    };
    if json {
        println!("{}", response.trim_end());
    } else {
        print!("{}", cluster_text(&doc, unix_seconds()));
    }
    ExitCode::SUCCESS
}

/// The rows aligned, one line each.
pub(super) fn columns(rows: &[Vec<String>]) -> String {
    aligned(rows).into_iter().map(|line| line + "\n").collect()
}

pub(super) fn cluster_text(doc: &ClusterDocument, now: i64) -> String {
    let clean = |s: &str| escape::controls(s).into_owned();
    let lease = if doc.lease.held {
        match doc.lease.seconds_since_renewal {
            Some(s) => format!("held, renewed {s:.1}s ago"),
            None => "held".into(),
        }
    } else {
        format!("none ({})", doc.lease.reason.as_deref().unwrap_or("no renewal in time"))
    };
    let mut out = format!("member {} of {}: lease {}", clean(&doc.member), clean(&doc.cluster), clean(&lease));
    if let Some(why) = &doc.draining {
        out.push_str(&format!(", draining ({})", clean(why)));
    }
    out.push_str(&format!(
        "\nclaims: {} won, {} taken by others, {} failed; units in {}, out {}\n\n",
        doc.claims.won, doc.claims.taken, doc.claims.failed, doc.grants, doc.revocations
    ));
    let mut members =
        vec![["MEMBER", "HOST", "PID", "AGE", "UNITS", "WEIGHT", "VERSION", "STATE"].map(String::from).to_vec()];
    for row in &doc.members {
        let m = &row.key;
        let name = if row.me { format!("{} (this)", m.name) } else { m.name.clone() };
        members.push(vec![
            clean(&name),
            clean(&m.host),
            m.pid.to_string(),
            human_duration(now - m.started_at as i64),
            row.units.to_string(),
            m.weight.to_string(),
            clean(&m.version),
            if m.draining { "draining".into() } else { "active".into() },
        ]);
    }
    out.push_str(&columns(&members));
    out.push('\n');
    let mut units = vec![["UNIT", "OWNER", "TOKEN", "HERE", "PLACED"].map(String::from).to_vec()];
    for u in &doc.units {
        // Where it is going, when that is not where it is.
        let placed = match (&u.placed, &u.member) {
            (Some(placed), Some(owner)) if placed == owner => "-".into(),
            (Some(placed), _) => format!("-> {}", clean(placed)),
            (None, _) => "-".into(),
        };
        units.push(vec![
            clean(&u.unit),
            u.member.as_deref().map_or_else(|| "-".into(), clean),
            u.token.map_or_else(|| "-".into(), |t| t.to_string()),
            u.status.map_or_else(|| "-".into(), |s| s.as_str().to_string()),
            placed,
        ]);
    }
    out.push_str(&columns(&units));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_view_lists_members_then_units_with_their_owners() {
        use lrpm_host::cluster::messages::MemberView;
        use lrpm_host::control::cluster::{LeaseState, MemberRow, UnitRow};
        let doc = ClusterDocument {
            cluster: "etcd://127.0.0.1:2379/f".into(),
            member: "a".into(),
            lease: LeaseState { held: false, reason: Some("etcd \u{1b}[31mdown".into()), ..Default::default() },
            members: vec![MemberRow {
                key: MemberView { name: "a".into(), host: "h".into(), ..Default::default() },
                me: true,
                units: 1,
            }],
            units: vec![
                UnitRow {
                    unit: "1#0".into(),
                    member: Some("a".into()),
                    token: Some(7),
                    status: Some(StatusName::Running),
                    placed: Some("a".into()),
                },
                UnitRow {
                    unit: "1#1".into(),
                    member: None,
                    token: None,
                    status: Some(StatusName::Elsewhere),
                    placed: Some("b".into()),
                },
            ],
            ..Default::default()
        };
        let text = cluster_text(&doc, 100);
        assert!(text.starts_with("member a of etcd://127.0.0.1:2379/f: lease none (etcd \\x1b[31mdown)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("a (this)  h ") && l.ends_with("active")), "{text}");
        assert!(
            text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1#0", "a", "7", "running", "-"]),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1#1", "-", "-", "elsewhere", "->", "b"]),
            "{text}"
        );
    }
}
