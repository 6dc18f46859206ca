//! A small blocking connection pool: idle connections are reused, at most `max` exist.

use std::sync::{Arc, Condvar, Mutex};

use crate::error::Result;

pub(crate) struct Pool<C> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    idle: Mutex<(Vec<C>, usize)>,
    freed: Condvar,
    max: usize,
    connect: Box<dyn Fn() -> Result<C> + Send + Sync>,
}

/// A connection lent by the pool; it goes back when dropped.
pub(crate) struct Pooled<C> {
    conn: Option<C>,
    inner: Arc<Inner<C>>,
}

impl<C> Pool<C> {
    pub(crate) fn new(max: usize, connect: impl Fn() -> Result<C> + Send + Sync + 'static) -> Self {
        Pool { inner: Arc::new(Inner { idle: Mutex::new((Vec::new(), 0)), freed: Condvar::new(), max, connect: Box::new(connect) }) }
    }

    pub(crate) fn get(&self) -> Result<Pooled<C>> {
        let mut g = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = g.0.pop() {
                return Ok(Pooled { conn: Some(conn), inner: self.inner.clone() });
            }
            if g.1 < self.inner.max {
                g.1 += 1;
                drop(g);
                return match (self.inner.connect)() {
                    Ok(conn) => Ok(Pooled { conn: Some(conn), inner: self.inner.clone() }),
                    Err(e) => {
                        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
                        self.inner.freed.notify_one();
                        Err(e)
                    }
                };
            }
            g = self.inner.freed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<C> Pooled<C> {
    /// Drops the connection instead of returning it (after an error that may have left it
    /// in a bad state).
    pub(crate) fn discard(mut self) {
        self.conn = None;
    }
}

impl<C> std::ops::Deref for Pooled<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.conn.as_ref().expect("a pooled connection is present until dropped")
    }
}

impl<C> std::ops::DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().expect("a pooled connection is present until dropped")
    }
}

impl<C> Drop for Pooled<C> {
    fn drop(&mut self) {
        let mut g = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        match self.conn.take() {
            Some(c) => g.0.push(c),
            None => g.1 -= 1,
        }
        self.inner.freed.notify_one();
    }
}
