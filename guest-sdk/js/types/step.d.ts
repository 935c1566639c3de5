// world runbox:step/step@1.0.0
export type OutcomeError = import('./interfaces/runbox-step-types.js').OutcomeError;
export type * as RunboxStepInput100 from './interfaces/runbox-step-input.js'; // import runbox:step/input@1.0.0
export type * as RunboxStepKvRead100 from './interfaces/runbox-step-kv-read.js'; // import runbox:step/kv-read@1.0.0
export type * as RunboxStepKvWrite100 from './interfaces/runbox-step-kv-write.js'; // import runbox:step/kv-write@1.0.0
export type * as RunboxStepLog100 from './interfaces/runbox-step-log.js'; // import runbox:step/log@1.0.0
export type * as RunboxStepToolMutate100 from './interfaces/runbox-step-tool-mutate.js'; // import runbox:step/tool-mutate@1.0.0
export type * as RunboxStepToolRead100 from './interfaces/runbox-step-tool-read.js'; // import runbox:step/tool-read@1.0.0
export type * as RunboxStepTypes100 from './interfaces/runbox-step-types.js'; // import runbox:step/types@1.0.0
/**
* Runs the step once: `ok` with the JSON output (as text; empty for
* `null`), or how it ends otherwise.
*/
export function run(): string;
