//! What the controller and the gateways hand each other through the API server (pure): the
//! published config and keys, and each gateway replica's heartbeat. Both sides use it; neither
//! imports the other.

pub mod heartbeat;
pub mod publish;
