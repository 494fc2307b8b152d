fn main() -> std::process::ExitCode {
    memhost::cli::main()
}
