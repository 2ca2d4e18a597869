fn main() -> std::process::ExitCode {
    logwarden::cli::main()
}
