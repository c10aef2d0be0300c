#![no_main]
//! Bus envelopes from Redis: any bytes give an envelope or a typed error.

use chorus_protocol::envelope::decode_envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_envelope("chat:room", data) {
        assert_eq!(env.channel, "chat:room");
        assert!(env.offset != 0 && !env.epoch.is_empty());
    }
});
