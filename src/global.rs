//! [`GLOBAL`]: the process-wide instance behind `PyMalloc` and the C functions, over the
//! operating system; a constant, so nothing needs initialising before the first call.

use pymalloc_arena::OsPlatform;

use crate::allocator::Allocator;

/// The process-wide instance.
pub(crate) static GLOBAL: Allocator<OsPlatform> = Allocator::new(OsPlatform);
