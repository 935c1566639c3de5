//! A tool answer longer than the first buffer is read back whole with
//! `last_tool_answer`, and the tool runs once. Built with Zig 0.17.1.
//!
//! It calls the read tool `dump` (e.g. `head -c 3000 /dev/zero`: 3000 NUL
//! bytes, which the host's JSON answer escapes to 18,000 bytes, past the
//! SDK's 16 KiB first buffer) and reports how many bytes of stdout it got.
//! Input `{"first_buffer": N}` uses an N-byte first buffer instead of the
//! default. Build beside runbox.zig:
//!
//!     zig build-exe long_answer.zig -target wasm32-wasi -O ReleaseSafe -fstrip \
//!         --stack 65536 -femit-bin=long_answer.wasm
const std = @import("std");
const runbox = @import("runbox.zig");

pub const panic = runbox.panic;

const Input = struct {
    /// Bytes of the first buffer; null for the SDK's default.
    first_buffer: ?usize = null,
};

pub fn main() noreturn {
    runbox.run(Input, step);
}

fn step(arena: std.mem.Allocator, input: Input) !void {
    const first = input.first_buffer orelse runbox.tool.first_buffer_default;
    const answer = if (input.first_buffer) |n|
        runbox.tool.call(arena, .read, "dump", "{}", .{ .first_buffer = n })
    else
        runbox.tool.read(arena, "dump", .{});
    const a = answer catch |err| runbox.fail("dump: {s}", .{runbox.describe(err)});
    if (a.rc != 0) runbox.fail("dump exited {d}", .{a.rc});
    const zeros = std.mem.count(u8, a.stdout, "\x00");
    runbox.log.info("dump: {d} bytes of stdout through a {d}-byte first buffer", .{ a.stdout.len, first });
    runbox.ok(.{ .bytes = a.stdout.len, .zeros = zeros, .first_buffer = first });
}
