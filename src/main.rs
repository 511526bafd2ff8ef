fn main() -> std::process::ExitCode {
    bulwark::cli::main()
}
