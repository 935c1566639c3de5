;; escalate: hands the incident to a human, with the step input (a JSON
;; document, typically {"message": "..."} from the runbook) as the reason.
;; Hand-written WAT: no SDK, just ABI v1. Needs no grants.
(module
  (import "runbox:step/v1" "input_len" (func $input_len (result i32)))
  (import "runbox:step/v1" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "runbox:step/v1" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $n i32)
    (local.set $n (call $input_len))
    ;; One page holds the input; a longer one is cut to fit.
    (if (i32.gt_u (local.get $n) (i32.const 65536))
      (then (local.set $n (i32.const 65536))))
    (local.set $n (call $input_read (i32.const 0) (local.get $n)))
    ;; outcome 2 = escalate
    (call $finish (i32.const 2) (i32.const 0) (local.get $n))))
