fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    logwarden::cli::main()
}

/// glibc gives each thread that allocates under contention an arena of its own (up to 8 per
/// core) and rarely hands their freed pages back. The daemon allocates on the pipeline
/// thread, the matching workers, tokio's blocking threads and sled's: after 20,000
/// incidents opened in a burst (`bench/scale.sh 20000`) the resident memory at rest was
/// 988–997 MB with glibc's default, 688 MB with two arenas, 567 MB with one (which opened
/// the incidents 10 % slower). An operator's own `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before any thread
        // is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
