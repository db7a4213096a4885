//! ubd
