"""The embedded digits set prepared by processes that start at once (test workers, seeds)."""

import subprocess
import sys

PREPARE = (
    "import sys; from deit_keras.data import digits; "
    "builder = digits.digits_builder(sys.argv[1]); "
    "print(builder.info.splits['train'].num_examples)"
)


def test_two_processes_preparing_one_data_dir_both_get_the_whole_set(tmp_path):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
        assert stdout.split()[-1] == "1437"
    # One of them prepared it; the other waited and found it prepared.
    assert sum("Preparing the embedded digits" in stderr for _, stderr in outputs) == 1
