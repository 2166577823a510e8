//! The bottom layer, used by everything above and using nothing of bootstage's: the retry
//! policy and deadlines, bounded child processes, sd_notify, logging, SIGTERM as a future
//! (`stop`), the plain HTTP(S) client's construction (`http`).

pub mod child;
pub mod duration;
pub mod exit;
pub mod http;
pub mod logging;
pub mod notify;
pub mod retry;
pub mod stop;
pub mod switch;
