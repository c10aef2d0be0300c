#![no_main]
//! JSON client commands: any bytes give a command or a typed error.

use chorus_protocol::codes::ErrorCode;
use chorus_protocol::wire::{self, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match wire::decode_command(Format::Json, data) {
        Ok(cmd) => assert!(cmd.id != 0 && cmd.body.is_some()),
        Err(e) => assert!(
            e.error.code == ErrorCode::BadRequest.code()
                || e.error.code == ErrorCode::UnknownCommand.code()
        ),
    }
});
