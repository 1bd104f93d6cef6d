fn main() -> std::process::ExitCode {
    oxirelay::cli::main()
}
