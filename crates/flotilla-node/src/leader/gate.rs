//! Whether a leader's writer may execute transactions: a cluster's leader that hands over
//! (`flotilla promote`) pauses its writer first, so that every transaction it executed is
//! proposed before the transfer and none is executed after it (it would be a transaction the
//! new leader's history does not hold: the old leader would have to copy a database); a leader
//! that stepped down closes it, so requests still queued are not executed but answered "retry".

use std::sync::{Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A pause was asked for; the writer parks at its pause job.
    Pausing,
    Paused,
    Closed,
}

#[derive(Debug)]
pub struct WriterGate {
    state: Mutex<State>,
    changed: Condvar,
}

impl Default for WriterGate {
    fn default() -> Self {
        WriterGate {
            state: Mutex::new(State::Open),
            changed: Condvar::new(),
        }
    }
}

impl WriterGate {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the writer to park at its next pause job (sent after this).
    pub fn request_pause(&self) {
        let mut s = self.state();
        if *s == State::Open {
            *s = State::Pausing;
        }
    }

    /// On the writer thread, at a pause job: waits while paused (a pause job whose pause was
    /// called off meanwhile passes). `false`: closed meanwhile (the writer ends).
    pub fn park(&self) -> bool {
        let mut s = self.state();
        if *s == State::Pausing {
            *s = State::Paused;
        }
        while *s == State::Paused {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        *s == State::Open
    }

    /// The writer goes on (a transfer that did not happen).
    pub fn open(&self) {
        let mut s = self.state();
        if matches!(*s, State::Pausing | State::Paused) {
            *s = State::Open;
            self.changed.notify_all();
        }
    }

    /// The leader stepped down: the writer executes nothing more.
    pub fn close(&self) {
        *self.state() = State::Closed;
        self.changed.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        *self.state() == State::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_parked_writer_goes_on_when_opened_and_ends_when_closed() {
        for (close, goes_on) in [(false, true), (true, false)] {
            let gate = Arc::new(WriterGate::default());
            gate.request_pause();
            let g = gate.clone();
            let writer = std::thread::spawn(move || g.park());
            while *gate.state() != State::Paused {
                std::thread::yield_now();
            }
            if close {
                gate.close();
            } else {
                gate.open();
            }
            assert_eq!(writer.join().unwrap(), goes_on);
            assert_eq!(gate.is_closed(), close);
        }
        // A pause job whose pause was called off before the writer reached it passes.
        let gate = WriterGate::default();
        gate.request_pause();
        gate.open();
        assert!(gate.park());
    }
}
