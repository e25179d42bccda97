//! SA Forum AIS error codes (`SaAisErrorT`), with their standard numeric values so that a
//! C binding can pass them through unchanged.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SaError {
    Ok = 1,
    Library = 2,
    Version = 3,
    Init = 4,
    Timeout = 5,
    TryAgain = 6,
    InvalidParam = 7,
    NoMemory = 8,
    BadHandle = 9,
    Busy = 10,
    Access = 11,
    NotExist = 12,
    NameTooLong = 13,
    Exist = 14,
    NoSpace = 15,
    Interrupt = 16,
    NameNotFound = 17,
    NoResources = 18,
    NotSupported = 19,
    BadOperation = 20,
    FailedOperation = 21,
    MessageError = 22,
    QueueFull = 23,
    QueueNotAvailable = 24,
    BadFlags = 25,
    TooBig = 26,
    NoSections = 27,
}

impl SaError {
    const ALL: [SaError; 27] = [
        SaError::Ok,
        SaError::Library,
        SaError::Version,
        SaError::Init,
        SaError::Timeout,
        SaError::TryAgain,
        SaError::InvalidParam,
        SaError::NoMemory,
        SaError::BadHandle,
        SaError::Busy,
        SaError::Access,
        SaError::NotExist,
        SaError::NameTooLong,
        SaError::Exist,
        SaError::NoSpace,
        SaError::Interrupt,
        SaError::NameNotFound,
        SaError::NoResources,
        SaError::NotSupported,
        SaError::BadOperation,
        SaError::FailedOperation,
        SaError::MessageError,
        SaError::QueueFull,
        SaError::QueueNotAvailable,
        SaError::BadFlags,
        SaError::TooBig,
        SaError::NoSections,
    ];

    /// The error for a wire value; `None` for a value no version of the spec defines.
    pub fn from_u32(v: u32) -> Option<SaError> {
        let idx = usize::try_from(v).ok()?.checked_sub(1)?;
        Self::ALL.get(idx).copied()
    }

    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// `Ok(())` for [`SaError::Ok`], else `Err(self)`.
    pub fn into_result(self) -> Result<(), SaError> {
        if self == SaError::Ok {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for SaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            SaError::Ok => "ok",
            SaError::Library => "library error",
            SaError::Version => "version not supported",
            SaError::Init => "not initialized",
            SaError::Timeout => "timed out",
            SaError::TryAgain => "try again",
            SaError::InvalidParam => "invalid parameter",
            SaError::NoMemory => "out of memory",
            SaError::BadHandle => "bad handle",
            SaError::Busy => "busy",
            SaError::Access => "access denied",
            SaError::NotExist => "does not exist",
            SaError::NameTooLong => "name too long",
            SaError::Exist => "already exists",
            SaError::NoSpace => "no space",
            SaError::Interrupt => "interrupted",
            SaError::NameNotFound => "name not found",
            SaError::NoResources => "no resources",
            SaError::NotSupported => "not supported",
            SaError::BadOperation => "bad operation",
            SaError::FailedOperation => "operation failed",
            SaError::MessageError => "message error",
            SaError::QueueFull => "queue full",
            SaError::QueueNotAvailable => "queue not available",
            SaError::BadFlags => "bad flags",
            SaError::TooBig => "too big",
            SaError::NoSections => "no sections",
        };
        f.write_str(s)
    }
}

impl std::error::Error for SaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip_and_unknown_values_are_refused() {
        for e in SaError::ALL {
            assert_eq!(SaError::from_u32(e.as_u32()), Some(e));
        }
        assert_eq!(SaError::TryAgain.as_u32(), 6);
        assert_eq!(SaError::from_u32(0), None);
        assert_eq!(SaError::from_u32(28), None);
        assert_eq!(SaError::from_u32(u32::MAX), None);
    }
}
