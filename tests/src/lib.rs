//! e2e fixture
