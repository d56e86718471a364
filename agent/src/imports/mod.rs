//! Files written by the tools volunteers already run, read into what the
//! agent reports: so far the iOS App Privacy Report (not yet wired to
//! `import`).

pub mod ios_privacy;
