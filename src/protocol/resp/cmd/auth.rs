//! `AUTH [username] password`: Potok has one user, `default`, with the configured password.

use super::{Context, Reply};
use crate::protocol::resp::args::Args;
use crate::protocol::resp::shared::RespShared;

pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Check a username/password pair against the configuration.
pub fn credentials_valid(shared: &RespShared, user: Option<&[u8]>, password: &[u8]) -> bool {
    let user_ok = user.is_none_or(|u| u == b"default");
    match shared.settings().password {
        Some(expected) => user_ok && expected.as_bytes() == password,
        // Like Redis's `nopass` default user: any password is accepted.
        None => user_ok,
    }
}

pub fn auth(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let first = args.required()?;
    let (user, password) = match args.optional() {
        Some(password) => (Some(first), password),
        None => (None, first),
    };
    args.finish()?;
    if user.is_none() && !context.shared.password_required() {
        return Err(Reply::error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ));
    }
    if !credentials_valid(context.shared, user.as_deref(), &password) {
        return Err(Reply::error(WRONGPASS));
    }
    context.session.authenticated = true;
    Ok(Reply::ok())
}
