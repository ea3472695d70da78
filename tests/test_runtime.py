import os

from cifar10_mlp.training import runtime

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795632598.983749   28463 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1795632598.984113   28463 cudart_stub.cc:31] Could not find cuda drivers",
    "E0000 00:00:1795632602.003283   28463 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]


def test_start_up_noise_is_dropped_and_every_other_line_kept_in_order(capfd):
    with runtime.filtered_native_stderr():
        os.write(2, (NOISE[0] + "\n" + NOISE[1] + "\n").encode())
        os.write(2, b"E0000 00:00:1795632602.1   28463 gpu_device.cc:9] a real error\n")
        os.write(2, (NOISE[2] + "\n" + NOISE[3] + "\n").encode())
        os.write(2, b"F0000 00:00:1795632602.2   28463 allocator.cc:1] out of memory\n")
    assert capfd.readouterr().err.splitlines() == [
        "E0000 00:00:1795632602.1   28463 gpu_device.cc:9] a real error",
        "F0000 00:00:1795632602.2   28463 allocator.cc:1] out of memory"]


def test_the_held_output_comes_out_even_when_the_block_fails(capfd):
    try:
        with runtime.filtered_native_stderr():
            os.write(2, b"kept\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert capfd.readouterr().err == "kept\n"
