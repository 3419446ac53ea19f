# Loaded by the ra-mohawk* suites (`load train_stop`): stop a training run at
# a known step and kill it there, the set-up of their kill -9 resume tests.

# stop_and_kill STEP COMMAND...: run COMMAND in the background with
# RA_TEST_STOP_AT_STEP=STEP (lib/train_run.c: the process stops itself with
# SIGSTOP after that step and its checkpoint), wait until it has stopped,
# then kill -9 it: never too late, whatever the load.  Fails when the run
# exits instead of stopping.
stop_and_kill() {
    local step=$1 pid state=
    shift
    RA_TEST_STOP_AT_STEP=$step "$@" &
    pid=$!
    for _ in $(seq 1 3000); do
        state=$(ps -o stat= -p "$pid") || break # exited: it did not stop
        [[ $state == T* ]] && break
        sleep 0.02
    done
    kill -9 "$pid" || true
    wait "$pid" || true
    [[ $state == T* ]] || { echo "the run did not stop at step $step (state '$state')"; return 1; }
}
