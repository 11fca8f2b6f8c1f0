//! The `profile-sync` binary: everything is in the library; see `cli`.

fn main() -> std::process::ExitCode {
    profile_sync::cli::main()
}
