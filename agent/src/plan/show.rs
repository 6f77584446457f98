//! Renders a container and its CRIU option sets for `haul inspect` (text or JSON).

use super::runc::Container;
use crate::register::json_patch::string;
use haul_proto::criu::CriuOpts;
use std::fmt::Write;

fn opts_lines(o: &CriuOpts) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut push = |k: &str, val: String| v.push((k.to_string(), val));
    if let Some(p) = o.pid {
        push("pid", p.to_string());
    }
    if let Some(r) = &o.root {
        push("root", r.clone());
    }
    if let Some(f) = &o.freeze_cgroup {
        push("freeze_cgroup", f.clone());
    }
    if let Some(m) = o.manage_cgroups_mode {
        push("manage_cgroups_mode", m.to_string());
    }
    if let Some(n) = o.empty_ns {
        push("empty_ns", format!("{n:#x}"));
    }
    for (name, flag) in [
        ("notify_scripts", o.notify_scripts),
        ("rst_sibling", o.rst_sibling),
        ("evasive_devices", o.evasive_devices),
        ("file_locks", o.file_locks),
        ("tcp_established", o.tcp_established),
        ("ext_unix_sk", o.ext_unix_sk),
    ] {
        if flag == Some(true) {
            push(name, "true".into());
        }
    }
    for e in &o.external {
        push("external", e.clone());
    }
    for e in &o.ext_mnt {
        push("ext_mnt", format!("{} -> {}", e.key, e.val));
    }
    for i in &o.inherit_fd {
        if i.fd < 0 {
            push(
                "inherit_fd",
                format!("{} -> a new namespace at restore", i.key),
            );
            continue;
        }
        push("inherit_fd", format!("{} -> fd {}", i.key, i.fd));
    }
    v
}

pub fn text(
    id: &str,
    bundle: &str,
    c: &Container,
    dump: &CriuOpts,
    restore: &CriuOpts,
    notes: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "container {id}\n  init pid:  {}\n  bundle:    {bundle}\n  rootfs:    {}",
        c.init_pid, c.rootfs
    );
    let _ = writeln!(
        s,
        "  freezer:   {}",
        c.freezer.as_deref().unwrap_or("(none)")
    );
    for (d, src) in &c.binds {
        let _ = writeln!(s, "  bind:      {src} on {d}");
    }
    for m in &c.cgroup_mounts {
        let _ = writeln!(s, "  cgroup:    {m}");
    }
    for m in &c.masked_files {
        let _ = writeln!(s, "  masked:    {m}");
    }
    for (fd, t) in c.stdio.iter().enumerate() {
        let _ = writeln!(s, "  fd {fd}:      {t}");
    }
    for (title, o) in [
        ("dump options (this host)", dump),
        ("restore options (if restored on this host)", restore),
    ] {
        let _ = writeln!(s, "{title}:");
        for (k, v) in opts_lines(o) {
            let _ = writeln!(s, "  {k:<20} {v}");
        }
    }
    for n in notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

pub fn json(
    id: &str,
    bundle: &str,
    c: &Container,
    dump: &CriuOpts,
    restore: &CriuOpts,
    notes: &[String],
) -> String {
    let list = |items: &[String]| {
        format!(
            "[{}]",
            items
                .iter()
                .map(|x| string(x))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let opts = |o: &CriuOpts| {
        let body: Vec<String> = opts_lines(o)
            .into_iter()
            .map(|(k, v)| format!("[{},{}]", string(&k), string(&v)))
            .collect();
        format!("[{}]", body.join(","))
    };
    let binds: Vec<String> = c
        .binds
        .iter()
        .map(|(d, s)| format!("{{\"destination\":{},\"source\":{}}}", string(d), string(s)))
        .collect();
    format!(
        "{{\"id\":{},\"bundle\":{},\"init_pid\":{},\"rootfs\":{},\"freezer\":{},\"binds\":[{}],\"cgroup_mounts\":{},\"cgroup_binds\":{},\"masked_files\":{},\"stdio\":{},\"dump\":{},\"restore\":{},\"notes\":{}}}",
        string(id),
        string(bundle),
        c.init_pid,
        string(&c.rootfs),
        c.freezer.as_deref().map(string).unwrap_or_else(|| "null".into()),
        binds.join(","),
        list(&c.cgroup_mounts),
        list(&c.cgroup_binds),
        list(&c.masked_files),
        list(&c.stdio),
        opts(dump),
        opts(restore),
        list(notes)
    )
}
