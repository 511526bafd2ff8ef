/// mimalloc instead of glibc's malloc: under write load glibc's allocator (arena locking,
/// `malloc_consolidate`) took about a sixth of a member's CPU (see `docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bulwark::cli::main()
}
