//! Generated gRPC types for Strata. These types stay at the edge: the node converts them to
//! domain types (strata-cluster) in one place per message.

pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// The encoded file descriptor set, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");

/// Metadata key carrying the bearer token on every call ("authorization: Bearer <token>").
pub const AUTHORIZATION: &str = "authorization";

/// The codec of every generated client and server: prost's, except that a message that does
/// not decode is INVALID_ARGUMENT (the caller sent bad bytes) instead of prost's INTERNAL,
/// which would blame the node. (A client decoding a node's reply sees the same code.)
pub mod codec {
    use std::marker::PhantomData;

    use tonic::Status;
    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
    use tonic_prost::{ProstCodec, ProstDecoder};

    #[derive(Debug, Clone)]
    pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for StrictCodec<T, U> {
        fn default() -> Self {
            StrictCodec(PhantomData)
        }
    }

    impl<T, U> Codec for StrictCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
        type Decoder = StrictDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::default().encoder()
        }

        fn decoder(&mut self) -> Self::Decoder {
            StrictDecoder(ProstCodec::<T, U>::default().decoder())
        }
    }

    #[derive(Debug)]
    pub struct StrictDecoder<U>(ProstDecoder<U>);

    impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(src).map_err(|s| {
                Status::invalid_argument(format!(
                    "the message does not decode as this protocol's Protobuf type ({})",
                    s.message()
                ))
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
