//! A caller's text buffer that decoders carve their output from, front to back.
//!
//! Parsers borrow plain strings straight from the input and decode only escaped ones (JSON
//! `\u0026`, mountinfo `\040`) into the arena, so every string they return lives as long as the
//! two buffers. Decoding never lengthens text, so an arena as large as the input never runs out.

/// The unused rest of a text buffer.
#[derive(Debug, Default)]
pub(crate) struct TextArena<'a> {
    free: &'a mut [u8],
}

impl<'a> TextArena<'a> {
    /// Uses all of `buf`.
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { free: buf }
    }

    /// Lets `write` fill the free space from its start and report how many bytes it wrote;
    /// keeps those bytes and returns them. On error, or if `write` claims more than the free
    /// space, nothing is kept (`no_room` is returned in the latter case).
    pub(crate) fn write<E>(
        &mut self,
        no_room: E,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<&'a [u8], E> {
        let free = core::mem::take(&mut self.free);
        match write(&mut *free) {
            Ok(n) if n <= free.len() => {
                let (used, rest) = free.split_at_mut(n);
                self.free = rest;
                Ok(used)
            }
            Ok(_) => {
                self.free = free;
                Err(no_room)
            }
            Err(e) => {
                self.free = free;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_consecutive_pieces_and_refuses_when_full() {
        let mut buf = [0u8; 5];
        let mut arena = TextArena::new(&mut buf);
        let a = arena.write((), |out| {
            out.get_mut(..2).ok_or(())?.copy_from_slice(b"ab");
            Ok(2)
        });
        let b = arena.write((), |out| {
            out.get_mut(..3).ok_or(())?.copy_from_slice(b"cde");
            Ok(3)
        });
        let full = arena.write((), |out| out.get_mut(..1).map(|_| 1).ok_or(()));
        let mut one = [0u8; 1];
        let lying = TextArena::new(&mut one).write((), |_| Ok(2));
        assert_eq!(
            (a, b, full, lying),
            (Ok(&b"ab"[..]), Ok(&b"cde"[..]), Err(()), Err(()))
        );
    }
}
