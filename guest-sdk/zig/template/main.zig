//! {name}: a runbox step in Zig. Reads the service's note from KV and
//! reports it. Built with Zig 0.17.1 (see README.md); runbox.zig beside it
//! is the SDK.
const std = @import("std");
const runbox = @import("runbox.zig");

/// A panic (`unreachable`, an overflow, an index out of bounds) escalates
/// with its message instead of trapping.
pub const panic = runbox.panic;

/// The input document; fields it does not name are ignored.
const Input = struct {
    service: []const u8,
};

pub fn main() noreturn {
    runbox.run(Input, step);
}

/// `arena` lives as long as the step: nothing needs freeing. Each of
/// `runbox.ok`, `retry`, `escalate` and `fail` ends the step; an error
/// returned from here escalates.
fn step(arena: std.mem.Allocator, input: Input) !void {
    const key = try std.fmt.allocPrint(arena, "svc/{s}/note", .{input.service});
    const note = runbox.kv.get(arena, key) catch |err|
        runbox.escalate("cannot read {s}: {s}", .{ key, runbox.describe(err) });
    runbox.log.info("{s}: {s}", .{ input.service, note orelse "no note" });
    runbox.ok(.{ .service = input.service, .note = note orelse "" });
}
