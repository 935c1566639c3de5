//! runbox.zig: write runbox steps in Zig against ABI v1 (../ABI.md).
//!
//! Built and tested with Zig 0.17.1 (PyPI `ziglang==0.17.1`, what
//! `scripts/bootstrap.sh --zig-steps` installs). Zig's std changes between
//! releases (std.json, std.fmt and std.Io especially), so another version
//! may need changes here.
//!
//! A step is a WASI command: `pub fn main() noreturn` that calls `run`.
//! Build it with a small stack, since Zig's default (16 MiB of linear
//! memory) would make the module's initial memory larger than small
//! `memory_mib` limits:
//!
//!     zig build-exe main.zig -target wasm32-wasi -O ReleaseSafe -fstrip \
//!         --stack 65536 -femit-bin=step.wasm
//!
//! With 64 KiB of stack the module starts with 2 pages (128 KiB) of memory;
//! overflowing the stack traps (it sits below the data, at address 0).
//!
//! Only the functions a step calls become imports, so a step imports no
//! capability it does not use (`runbox caps step.wasm` lists them). `finish`
//! does not return, so a step that ends through it and declares `pub const
//! panic = runbox.panic;` imports nothing from `wasi_snapshot_preview1` at
//! all (Zig's default panic handler alone imports some 30 of its functions).
//!
//! **Calling a tool again runs it again.** `tool.read` and `tool.mutate`
//! call the tool exactly once; when its answer is longer than the first
//! buffer, the rest is read back with `last_tool_answer`, never by calling
//! the tool a second time (a mutating tool would mutate twice). Do the same
//! if you use `raw` directly.
//!
//! Memory: every function that returns bytes takes an allocator and returns
//! memory owned by the caller. `run` hands the step an arena that lives as
//! long as the step, so a step never needs to free anything.

const std = @import("std");
const Allocator = std.mem.Allocator;

/// The ABI v1 imports, exactly as ABI.md declares them (pointers and
/// `usize` lengths are wasm32 `i32`s). Prefer the wrappers below.
pub const raw = struct {
    /// `runbox:step/v1`: always linked.
    pub const step = struct {
        pub extern "runbox:step/v1" fn input_len() i32;
        pub extern "runbox:step/v1" fn input_read(ptr: [*]u8, len: usize) i32;
        pub extern "runbox:step/v1" fn log(level: i32, ptr: [*]const u8, len: usize) void;
        pub extern "runbox:step/v1" fn finish(outcome: i32, ptr: [*]const u8, len: usize) noreturn;
        /// Copies up to `cap` bytes of the answer of the attempt's most recent
        /// tool call and returns its full length, or -1 when it gave none.
        /// Runs nothing and costs no budget.
        pub extern "runbox:step/v1" fn last_tool_answer(buf: [*]u8, cap: usize) i64;
    };
    /// `runbox:kv-read/v1`: linked when the policy grants `kv_read`.
    pub const kv_read = struct {
        pub extern "runbox:kv-read/v1" fn get(kp: [*]const u8, kl: usize, buf: [*]u8, cap: usize) i64;
    };
    /// `runbox:kv-write/v1`: linked when the policy grants `kv_write`.
    pub const kv_write = struct {
        pub extern "runbox:kv-write/v1" fn put(kp: [*]const u8, kl: usize, vp: [*]const u8, vl: usize) i32;
        pub extern "runbox:kv-write/v1" fn delete(kp: [*]const u8, kl: usize) i32;
    };
    /// `runbox:tool-read/v1`: linked when the policy grants a `read` tool.
    pub const tool_read = struct {
        pub extern "runbox:tool-read/v1" fn call(np: [*]const u8, nl: usize, ap: [*]const u8, al: usize, buf: [*]u8, cap: usize) i64;
    };
    /// `runbox:tool-mutate/v1`: linked when the policy grants a `mutate`
    /// tool and the caller holds the mutation token.
    pub const tool_mutate = struct {
        pub extern "runbox:tool-mutate/v1" fn call(np: [*]const u8, nl: usize, ap: [*]const u8, al: usize, buf: [*]u8, cap: usize) i64;
    };
};

/// The ABI's negative return codes, and what the SDK itself can run into.
pub const Error = error{
    /// -1: the key is absent (`kv.get` returns null instead).
    NotFound,
    /// -2: refused by policy. Recorded as a violation: the attempt escalates
    /// whatever outcome the step reports.
    Denied,
    /// -3: a key or value over its size limit.
    TooLarge,
    /// -4: a bad pointer or length, a string that is not UTF-8, args that
    /// are not a JSON object or do not match the tool's declared arguments.
    Invalid,
    /// -5: `kv_ops`, `kv_write_bytes` or `tool_calls` used up. Calling the
    /// same capability again stops the step.
    BudgetExhausted,
    /// -6: the tool could not be started (the call is still recorded).
    ToolFailure,
    /// A negative code this SDK does not know.
    UnknownCode,
    /// The host's tool answer did not decode.
    BadAnswer,
    OutOfMemory,
};

/// The address to pass for `bytes`. The host refuses a range that reaches
/// past the end of memory even when it is empty, and Zig places empty
/// slices (`alloc(u8, 0)`, `&.{}`) at the top of the address space: an empty
/// slice is passed at an address inside memory instead.
fn from(bytes: []const u8) [*]const u8 {
    return if (bytes.len == 0) &no_bytes else bytes.ptr;
}

/// `from` for a buffer the host writes to (it writes nothing to an empty one).
fn into(buf: []u8) [*]u8 {
    return if (buf.len == 0) &no_bytes else buf.ptr;
}

var no_bytes: [1]u8 = undefined;

/// A code returned by a host call: the non-negative value, or its error.
fn check(code: i64) Error!usize {
    if (code >= 0) return @intCast(code);
    return switch (code) {
        -1 => error.NotFound,
        -2 => error.Denied,
        -3 => error.TooLarge,
        -4 => error.Invalid,
        -5 => error.BudgetExhausted,
        -6 => error.ToolFailure,
        else => error.UnknownCode,
    };
}

/// Words for an error in a reason or a log line: the SDK's own errors
/// described, any other error by its name.
pub fn describe(err: anyerror) []const u8 {
    return switch (err) {
        error.NotFound => "not found",
        error.Denied => "denied by policy",
        error.TooLarge => "too large",
        error.Invalid => "invalid argument",
        error.BudgetExhausted => "budget exhausted",
        error.ToolFailure => "the tool could not run",
        error.UnknownCode => "unknown host error",
        error.BadAnswer => "cannot decode the host's answer",
        error.OutOfMemory => "out of memory",
        else => @errorName(err),
    };
}

// ---------------------------------------------------------------------------
// Running a step.

/// Runs `step(arena, input)` and makes sure the step ends with an outcome:
/// the input document is parsed into `Input` with std.json (unknown fields
/// ignored; `[]const u8` takes the raw text, `std.json.Value` anything),
/// and input that does not parse fails the step. An error `step` returns
/// escalates (with `describe(err)`); returning without finishing escalates
/// too.
///
///     pub fn main() noreturn {
///         runbox.run(Input, step);
///     }
///     fn step(arena: std.mem.Allocator, input: Input) !void { ... runbox.ok(.{ ... }); }
pub fn run(comptime Input: type, comptime step: anytype) noreturn {
    // One arena for the whole step: it lives until `finish`, so nothing
    // the step allocates needs freeing.
    var arena_state: std.heap.ArenaAllocator = .init(std.heap.wasm_allocator);
    const arena = arena_state.allocator();
    const text = inputText(arena) catch |err| escalate("cannot read the input: {s}", .{describe(err)});
    const value: Input = if (Input == []const u8)
        text
    else
        std.json.parseFromSliceLeaky(Input, arena, text, .{ .ignore_unknown_fields = true }) catch |err|
            fail("step input does not match: {t}", .{err});
    const result = step(arena, value);
    if (@typeInfo(@TypeOf(result)) == .error_union) {
        _ = result catch |err| escalate("step error: {s}", .{describe(err)});
    }
    escalate("the step returned without an outcome: end it with runbox.ok, retry, escalate or fail", .{});
}

/// The panic handler for the step's root file (`pub const panic =
/// runbox.panic;`): a panic (`unreachable`, an overflow, an out-of-bounds
/// index in safe builds) escalates with its message instead of trapping.
pub const panic = std.debug.FullPanic(panicFn);

fn panicFn(msg: []const u8, first_trace_addr: ?usize) noreturn {
    _ = first_trace_addr;
    escalate("panic: {s}", .{msg});
}

// ---------------------------------------------------------------------------
// Input.

/// The step's input document, as JSON text.
pub fn inputText(gpa: Allocator) Error![]u8 {
    const len = try check(raw.step.input_len());
    const buf = try gpa.alloc(u8, len);
    errdefer gpa.free(buf);
    const n = try check(raw.step.input_read(into(buf), buf.len));
    return if (n < len) try gpa.realloc(buf, n) else buf;
}

/// The input parsed into `T` (unknown fields ignored). Leaky: use an arena.
pub fn parseInput(comptime T: type, arena: Allocator) !T {
    const text = try inputText(arena);
    return std.json.parseFromSliceLeaky(T, arena, text, .{ .ignore_unknown_fields = true });
}

// ---------------------------------------------------------------------------
// Outcomes: each ends the step (`finish` does not return, and nothing after
// it counts).

/// The ABI's outcome codes.
pub const Outcome = enum(i32) { ok = 0, retry = 1, escalate = 2, fail = 3 };

/// Ends the step `ok` with `output` written as JSON by std.json (a struct,
/// an anonymous `.{ .field = value }`, a slice, `null`, ...).
pub fn ok(output: anytype) noreturn {
    const text = std.json.Stringify.valueAlloc(std.heap.wasm_allocator, output, .{}) catch
        escalate("out of memory writing the step's output", .{});
    okJson(text);
}

/// Ends the step `ok` with output that is already JSON text ("" for null).
pub fn okJson(json_text: []const u8) noreturn {
    raw.step.finish(@backingInt(Outcome.ok), from(json_text), json_text.len);
}

/// Ends the step asking for another attempt (within `max_retries`).
pub fn retry(comptime fmt: []const u8, args: anytype) noreturn {
    finishReason(.retry, fmt, args);
}

/// Ends the step handing the incident to a human, with the reason.
pub fn escalate(comptime fmt: []const u8, args: anytype) noreturn {
    finishReason(.escalate, fmt, args);
}

/// Ends the step as failed (the runbook's `on.fail` follows).
pub fn fail(comptime fmt: []const u8, args: anytype) noreturn {
    finishReason(.fail, fmt, args);
}

fn finishReason(outcome: Outcome, comptime fmt: []const u8, args: anytype) noreturn {
    // A fixed buffer: ending a step must work even with the heap exhausted.
    var buf: [1024]u8 = undefined;
    const reason = formatCapped(&buf, fmt, args);
    raw.step.finish(@backingInt(outcome), from(reason), reason.len);
}

/// `fmt` with `args` in `buf`, cut with "..." when it does not fit.
fn formatCapped(buf: []u8, comptime fmt: []const u8, args: anytype) []const u8 {
    return std.fmt.bufPrint(buf, fmt, args) catch {
        const cut = "...";
        @memcpy(buf[buf.len - cut.len ..], cut);
        return buf;
    };
}

// ---------------------------------------------------------------------------
// Logs.

/// Log lines, kept in the step record (each counts against `output_bytes`:
/// its length plus 32).
pub const log = struct {
    pub const Level = enum(i32) { trace = 0, debug = 1, info = 2, warn = 3, err = 4 };

    /// One line, as it is.
    pub fn write(level: Level, message: []const u8) void {
        raw.step.log(@backingInt(level), from(message), message.len);
    }

    /// One formatted line (std.fmt). A long line is formatted on the heap;
    /// if that fails too it is cut at 1 KiB.
    pub fn print(level: Level, comptime fmt: []const u8, args: anytype) void {
        var buf: [1024]u8 = undefined;
        if (std.fmt.bufPrint(&buf, fmt, args)) |line| {
            write(level, line);
        } else |_| if (std.fmt.allocPrint(std.heap.wasm_allocator, fmt, args)) |line| {
            defer std.heap.wasm_allocator.free(line);
            write(level, line);
        } else |_| {
            write(level, formatCapped(&buf, fmt, args));
        }
    }

    pub fn trace(comptime fmt: []const u8, args: anytype) void {
        print(.trace, fmt, args);
    }
    pub fn debug(comptime fmt: []const u8, args: anytype) void {
        print(.debug, fmt, args);
    }
    pub fn info(comptime fmt: []const u8, args: anytype) void {
        print(.info, fmt, args);
    }
    pub fn warn(comptime fmt: []const u8, args: anytype) void {
        print(.warn, fmt, args);
    }
    pub fn err(comptime fmt: []const u8, args: anytype) void {
        print(.err, fmt, args);
    }
};

/// A `std.Options.logFn` that sends std.log to the step record instead of
/// stderr: `pub const std_options: std.Options = .{ .logFn = runbox.logFn };`
pub fn logFn(
    comptime level: std.log.Level,
    comptime scope: @EnumLiteral(),
    comptime format: []const u8,
    args: anytype,
) void {
    const prefix = if (scope == .default) "" else "(" ++ @tagName(scope) ++ ") ";
    const to: log.Level = switch (level) {
        .debug => .debug,
        .info => .info,
        .warn => .warn,
        .err => .err,
    };
    log.print(to, prefix ++ format, args);
}

// ---------------------------------------------------------------------------
// KV.

/// The step KV (grants `kv_read`, `kv_write`). Writes are staged and
/// committed together with the step's outcome.
pub const kv = struct {
    /// The value of `key`, or null when absent. Reads see the step's own
    /// staged writes.
    pub fn get(gpa: Allocator, key: []const u8) Error!?[]u8 {
        // `get` returns the full length: when the value is longer than the
        // buffer, ABI.md says to call again with room for it (unlike a tool
        // call, a read runs nothing; it costs one more `kv_ops`).
        var cap: usize = 4096;
        while (true) {
            const buf = try gpa.alloc(u8, cap);
            const code = raw.kv_read.get(from(key), key.len, into(buf), buf.len);
            if (code == -1) {
                gpa.free(buf);
                return null;
            }
            errdefer gpa.free(buf);
            const n = try check(code);
            // Exactly `n` bytes, so the caller frees what it was given.
            if (n <= cap) return try gpa.realloc(buf, n);
            gpa.free(buf);
            cap = n;
        }
    }

    /// Stages a write of `value` to `key`.
    pub fn put(key: []const u8, value: []const u8) Error!void {
        _ = try check(raw.kv_write.put(from(key), key.len, from(value), value.len));
    }

    /// Stages a delete of `key`.
    pub fn delete(key: []const u8) Error!void {
        _ = try check(raw.kv_write.delete(from(key), key.len));
    }
};

// ---------------------------------------------------------------------------
// Tools.

/// Host tools (grant `tools`; the tool registry says `read` or `mutate`).
///
/// **Calling a tool again runs it again.** Each `read`, `mutate` or `call`
/// here runs the tool exactly once and reads a long answer back with
/// `last_tool_answer`.
pub const tool = struct {
    pub const Mode = enum { read, mutate };

    /// What a tool answered.
    pub const Answer = struct {
        /// Exit code; -1 when killed or timed out.
        rc: i32,
        stdout: []const u8,
        stderr: []const u8,
        /// stdout or stderr was cut at `tool_output_bytes`.
        truncated: bool = false,
        /// The tool was killed at its timeout.
        timed_out: bool = false,

        pub fn deinit(self: Answer, gpa: Allocator) void {
            gpa.free(self.stdout);
            gpa.free(self.stderr);
        }
    };

    /// The buffer an answer is first read into; most answers fit, and a
    /// longer one is read back whole with `last_tool_answer`.
    pub const first_buffer_default: usize = 16 * 1024;

    /// Calls a `read` tool with `args` (a struct or anonymous struct, written
    /// as a JSON object; `.{}` for none).
    pub fn read(gpa: Allocator, name: []const u8, args: anytype) Error!Answer {
        return callWith(gpa, .read, name, args);
    }

    /// Calls a `mutate` tool (needs the mutation token). Never call it again
    /// to "retry" a read of its answer: that mutates again.
    pub fn mutate(gpa: Allocator, name: []const u8, args: anytype) Error!Answer {
        return callWith(gpa, .mutate, name, args);
    }

    fn callWith(gpa: Allocator, comptime mode: Mode, name: []const u8, args: anytype) Error!Answer {
        const Args = @TypeOf(args);
        // `.{}` is an empty tuple, which std.json writes as `[]`.
        const empty = @typeInfo(Args) == .@"struct" and std.meta.fieldNames(Args).len == 0;
        const args_json = if (empty) "{}" else try std.json.Stringify.valueAlloc(gpa, args, .{
            .emit_null_optional_fields = false,
        });
        defer if (!empty) gpa.free(args_json);
        return call(gpa, mode, name, args_json, .{});
    }

    pub const CallOptions = struct {
        /// Bytes of the first buffer (more is read back, never re-called).
        first_buffer: usize = first_buffer_default,
    };

    /// Calls a tool with args that are already JSON text (an object), once.
    /// `mode` is comptime so that only its module is imported: a step
    /// importing `tool-mutate` without the grant is refused, even in a
    /// Debug build that keeps every branch.
    pub fn call(gpa: Allocator, comptime mode: Mode, name: []const u8, args_json: []const u8, options: CallOptions) Error!Answer {
        var buf = try gpa.alloc(u8, options.first_buffer);
        defer gpa.free(buf);
        const call_fn = comptime switch (mode) {
            .read => &raw.tool_read.call,
            .mutate => &raw.tool_mutate.call,
        };
        const len = try check(call_fn(from(name), name.len, from(args_json), args_json.len, into(buf), buf.len));
        if (len > buf.len) {
            // The answer did not fit. Calling the tool again would run it
            // again: read back the answer the host kept instead.
            buf = try gpa.realloc(buf, len);
            const again = try check(raw.step.last_tool_answer(into(buf), buf.len));
            if (again != len) return error.BadAnswer;
        }
        return std.json.parseFromSliceLeaky(Answer, gpa, buf[0..len], .{
            .ignore_unknown_fields = true,
            // stdout and stderr get their own allocations: `buf` is freed.
            .allocate = .alloc_always,
        }) catch |e| switch (e) {
            error.OutOfMemory => error.OutOfMemory,
            else => error.BadAnswer,
        };
    }
};
