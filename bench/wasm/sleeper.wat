;; A WASI module that stays up, sleeping a second at a time (poll_oneoff on the monotonic
;; clock): what an idle service module costs.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; One clock subscription at 0 (48 bytes): userdata, tag 0 (clock) at 8,
    ;; clock id 1 (monotonic) at 16, timeout 1 s at 24, precision at 32, flags at 40.
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 1000000000))
    (loop $sleep
      (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $sleep))))
