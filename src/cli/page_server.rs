//! `haul page-server`: serves image sets to lazy restores and pulls elsewhere.

use haul::runner::exit;
use haul::Error;

use super::{flush, out, PageServerArgs};

/// `haul page-server --listen ADDR --store DIR --set SET [--token-file F]`.
pub fn run(args: PageServerArgs) -> Result<u8, Error> {
    haul::xfer::check_listen(&args.listen, args.token_file.is_some())?;
    let store = std::sync::Arc::new(haul::store::Store::open(&args.store.store)?);
    let token = args
        .token_file
        .as_deref()
        .map(haul::xfer::read_token_file)
        .transpose()?;
    let opts = haul::xfer::ServerOptions {
        token,
        jobs: args.jobs,
        ..Default::default()
    };
    let server = haul::xfer::PageServer::bind(&args.listen, store, &args.sets, opts)?;
    out(&format!("listening on {}", server.local_addr()?));
    flush();
    server.serve()?;
    Ok(exit::OK)
}
