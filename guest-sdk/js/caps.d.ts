// The optional capabilities of a step: build.sh writes caps.js from the
// imports in the step's wit/world.wit, each an interface's bindings or null.
export declare const kvRead: typeof import("runbox:step/kv-read@1.0.0") | null;
export declare const kvWrite: typeof import("runbox:step/kv-write@1.0.0") | null;
export declare const toolRead: typeof import("runbox:step/tool-read@1.0.0") | null;
export declare const toolMutate: typeof import("runbox:step/tool-mutate@1.0.0") | null;
