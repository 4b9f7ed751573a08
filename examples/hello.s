# hello.s — prints "Hello, world!" through the CONSOLE_WRITE hypercall, then powers off with
# exit code 0 (hypercall EXIT). Runs in supervisor mode without paging, as the VM starts.

        .equ    HCALL_EXIT, 1
        .equ    HCALL_CONSOLE_WRITE, 2

        .text
        .global _start
_start:
        li      a0, HCALL_CONSOLE_WRITE
        la      a1, message                 # a1 = address of the bytes (pc-relative)
        li      a2, message_end - message   # a2 = length
        hcall
        li      a0, HCALL_EXIT
        li      a1, 0                       # exit code
        hcall
1:      j       1b                          # not reached: EXIT powers the VM off

        .data
message:
        .ascii  "Hello, world!\n"
message_end:
