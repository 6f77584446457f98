//! `haul`: parse the command line, set up logging, run the command, map errors to exit codes.

use argh::FromArgs;
use haul::cli::{Cli, Command, MigrateWhat};
use haul::error::{Error, Result};
use haul::transfer::Key;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // CRIU runs haul as its `tar` for tmpfs contents (haul::criu::tar).
    if argv
        .first()
        .is_some_and(|a| haul::criu::tar::invoked_as_tar(a))
    {
        return ExitCode::from(haul::criu::tar::main(&argv[1..]));
    }
    let (args, verbose, quiet) = global_flags(argv);
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cli = match Cli::from_args(
        &strs[..1.min(strs.len())],
        strs.get(1..).unwrap_or_default(),
    ) {
        Ok(c) => c,
        Err(early) => {
            let code = if early.status.is_ok() { 0 } else { 2 };
            if code == 0 {
                println!("{}", early.output);
            } else {
                eprintln!("{}", early.output);
            }
            return ExitCode::from(code);
        }
    };
    cli.verbose = cli.verbose.saturating_add(verbose);
    cli.quiet |= quiet;
    haul::logger::init(haul::logger::level_from(cli.verbose, cli.quiet));
    haul::util::cloexec_inherited_fds();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(e.kind.exit_code())
        }
    }
}

/// Puts haul's own `tar` first in CRIU's PATH (`<work root>/bin/tar`); the system's tar stays
/// CRIU's if that fails.
fn builtin_tar(work_root: &Path) {
    if let Err(e) = haul::criu::tar::install(&work_root.join("bin")) {
        log::warn!("{e}; CRIU archives tmpfs contents with the system's tar");
    }
}

/// Takes `-v`, `-vv`, `--verbose`, `-q`, `--quiet` from anywhere before `--`, so they work after
/// the subcommand too (`haul serve ... -v`).
fn global_flags(args: Vec<String>) -> (Vec<String>, u8, bool) {
    let (mut verbose, mut quiet, mut rest, mut ended) = (0u8, false, Vec::new(), false);
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || ended {
            rest.push(a);
            continue;
        }
        match a.as_str() {
            "--" => {
                ended = true;
                rest.push(a);
            }
            "-v" | "--verbose" => verbose = verbose.saturating_add(1),
            "-vv" => verbose = verbose.saturating_add(2),
            "-q" | "--quiet" => quiet = true,
            _ => rest.push(a),
        }
    }
    (rest, verbose, quiet)
}

/// The key from `--key`, or none with `--insecure`; neither is an error.
fn key_of(key: Option<&Path>, insecure: bool) -> Result<Option<Key>> {
    match (key, insecure) {
        (Some(_), true) => Err(Error::usage("give either --key FILE or --insecure, not both")),
        (Some(p), false) => Key::load(p).map(Some).map_err(Error::usage),
        (None, true) => Ok(None),
        (None, false) => Err(Error::usage(
            "no key: pass --key FILE (create one with `haul keygen FILE` and copy it to both hosts), \
             or --insecure on a trusted test network",
        )),
    }
}

fn criu_of(flag: Option<&Path>) -> Result<std::path::PathBuf> {
    haul::criu::find_criu(flag).map_err(|e| Error::setup(e.to_string()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen(k) => {
            let key = Key::generate().map_err(Error::other)?;
            key.write_new(&k.file).map_err(Error::usage)?;
            eprintln!(
                "haul: wrote a new key to {} (mode 0600); copy it to the other host",
                k.file.display()
            );
            Ok(())
        }
        Command::Serve(s) => {
            if s.syslog {
                if let Err(e) = haul::logger::to_syslog() {
                    log::warn!("{e}; logging to stderr instead");
                }
            }
            let listener =
                haul::service::listener(s.listen.as_deref(), s.fd).map_err(Error::usage)?;
            let key = key_of(s.key.as_deref(), s.insecure)?;
            builtin_tar(&s.work_dir);
            let cfg = haul::dest::session::SessionConfig {
                key,
                criu: criu_of(s.criu.as_deref())?,
                work_root: s.work_dir,
                keep_images: s.keep_images,
                runc_root: s.runc_root,
                bundle_root: s.bundle_root,
                stdio_dir: s.stdio_dir,
                runc: s.runc.unwrap_or_else(|| "runc".into()),
                idle_timeout: std::time::Duration::from_secs(s.idle_timeout),
                commit_timeout: haul::limits::COMMIT_TIMEOUT,
            };
            // Migrations interrupted by a crash: clean up, or keep in-doubt ones for `haul recover`.
            haul::dest::recover::scan(&cfg);
            let opts = haul::dest::serve::Options {
                key_file: s.key,
                pid_file: s.pid_file,
            };
            haul::dest::serve::serve(listener, cfg, &opts)
        }
        Command::Migrate(m) => match m.what {
            MigrateWhat::Runc(r) => {
                let key = key_of(r.key.as_deref(), r.insecure)?;
                let criu = criu_of(r.criu.as_deref())?;
                builtin_tar(&r.work_dir);
                haul::source::runc::migrate_runc(&r, key.as_ref(), &criu, cli.quiet)
            }
            MigrateWhat::Pid(p) => {
                let key = key_of(p.key.as_deref(), p.insecure)?;
                let criu = criu_of(p.criu.as_deref())?;
                builtin_tar(&p.work_dir);
                let pre_dump = haul::source::precopy::Settings::from_flags(
                    p.pre_dump,
                    p.pre_dump_max_iterations,
                    p.pre_dump_min_pages,
                    p.pre_dump_max_growth,
                )?;
                haul::source::migrate::migrate_pid(
                    p.pid,
                    &haul::source::migrate::Options {
                        to: &p.to,
                        key: key.as_ref(),
                        criu: &criu,
                        work_root: &p.work_dir,
                        stats_json: p.stats_json.as_deref(),
                        keep_work: p.keep_work,
                        quiet: cli.quiet,
                        lazy: p.lazy,
                        eager_restore: p.eager_restore,
                        pre_dump,
                    },
                )
            }
        },
        Command::Inspect(i) => match i.what {
            haul::cli::InspectWhat::Runc(r) => {
                haul::source::runc::inspect(&r.runc_root, &r.id, r.json)
            }
        },
        Command::Recover(r) => {
            if let Some(root) = r.dir.parent() {
                builtin_tar(root);
            }
            let cfg = haul::dest::session::SessionConfig {
                key: None,
                criu: criu_of(r.criu.as_deref())?,
                work_root: r.dir.parent().map(Path::to_path_buf).unwrap_or_default(),
                keep_images: false,
                runc_root: r.runc_root,
                bundle_root: r.bundle_root,
                stdio_dir: r.stdio_dir,
                runc: r.runc.unwrap_or_else(|| "runc".into()),
                idle_timeout: haul::limits::IDLE_TIMEOUT,
                commit_timeout: haul::limits::COMMIT_TIMEOUT,
            };
            haul::dest::recover::complete(&r.dir, &cfg)
        }
        Command::StdioRelay(r) => haul::dest::stdio::relay(&r.log, r.hold),
        Command::PostcopyGuard(g) => haul::dest::lazy::guard(g.pid, g.start_time),
        Command::FreezeGuard(g) => haul::source::freeze::guard(
            g.freezer.as_deref(),
            g.criu_pid,
            g.page_socket,
            g.unlock_network_of,
            &g.tasks,
        ),
        Command::Check(c) => {
            let key = match &c.to {
                Some(_) => key_of(c.key.as_deref(), c.insecure)?,
                None => None,
            };
            let criu = criu_of(c.criu.as_deref()).unwrap_or_else(|_| "criu".into());
            haul::check::run(&criu, &c.work_dir, c.to.as_deref(), key.as_ref())
        }
    }
}
